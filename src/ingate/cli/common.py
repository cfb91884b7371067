"""What every subcommand shares: the one-line user error, and loading a policy."""

from __future__ import annotations

from ingate.policy import Policy, PolicyError, load_policy


class UserError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def load(arg: str | None) -> Policy:
    try:
        policy = load_policy(arg)
        if policy.source != "<none>":
            from ingate.gate.compile import compile_policy

            compile_policy(policy)  # surfaces regex and phrase errors before any model loads
        return policy
    except PolicyError as e:
        raise UserError(str(e), code=2) from None
