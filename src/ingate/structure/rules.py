"""How a policy applies inside structured output.

`redact` rewrites released text with a placeholder; inside JSON that can break the structure (a
number field, a `pattern`, a `format`, an `enum`) and it puts text the grammar never saw into the
output. So under a structure a redact rule acts as `prevent`: the match is never written, and
the field is generated again under the ban, valid by construction. `prevent` and `stop` apply
exactly as in prose; a stop ends the output unfinished, with finish_reason `content_filter`.
"""

from __future__ import annotations

import dataclasses

from ingate.gate.kinds.forbid import ForbidSpec
from ingate.policy import Policy


def inside_structure(policy: Policy) -> Policy:
    """`policy` as it governs structured output: its redact rules prevent instead."""
    if not any(isinstance(r, ForbidSpec) and r.action == "redact" for r in policy.rules):
        return policy
    rules = tuple(dataclasses.replace(r, action="prevent") if isinstance(r, ForbidSpec) and r.action == "redact"
                  else r for r in policy.rules)
    return dataclasses.replace(policy, rules=rules, digest=f"{policy.digest}:structured")
