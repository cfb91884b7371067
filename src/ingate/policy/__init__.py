"""Policies: YAML files of rules, validated with errors that say what to fix, and the registry of
rule kinds (`kinds`) every rule belongs to.

    load_policy(path)    a file, "default" (the shipped PII pack) or "none" (ungoverned)
    parse_policy(text)   the same from a string
"""

from ingate.policy.kinds import RuleKind, SpecContext, register_kind
from ingate.policy.load import load_policy, parse_policy
from ingate.policy.model import NONE_POLICY, Policy, PolicyError, RuleSpec

__all__ = ["NONE_POLICY", "Policy", "PolicyError", "RuleKind", "RuleSpec", "SpecContext", "load_policy",
           "parse_policy", "register_kind"]
