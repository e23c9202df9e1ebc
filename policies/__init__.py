"""Policies: the model of who may get what, and the pure decision engine."""

from policies.engine import Decision, Deny, Grant, LedgerGrant, Revoke, decide
from policies.loader import PolicyError, PolicyLoadError, PolicySet, load_policies
from policies.model import Policy, PolicyFile, TargetSpec

__all__ = [
    "Decision",
    "Deny",
    "Grant",
    "LedgerGrant",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyLoadError",
    "PolicySet",
    "Revoke",
    "TargetSpec",
    "decide",
    "load_policies",
]
