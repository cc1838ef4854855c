"""The behavioural SLA per agent: what each detector compares a session against.

This module holds the resolved, typed form (``AgentPolicy``) that detectors read from
``session.policy``. Loading the YAML policy file, its JSON Schema (``schemas/policy.schema.json``),
glob matching on service and agent, and ``agentwatch policy check`` build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType

#: Tools that frameworks call on their own (not the agent's choice): never out of scope.
BUILTIN_TOOLS = ("final_answer", "transfer_to_*", "handoff_to_*", "think")


@dataclass(frozen=True, slots=True)
class ToolConstraint:
    """Argument limits of one allowed tool; empty means no limit of that kind."""

    path_prefixes: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    sql_verbs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    rule: str = "default"  # which policy rule matched (for incidents and audit)
    allowed_tools: tuple[str, ...] | None = None  # globs; None: no scope declared
    tool_constraints: Mapping[str, ToolConstraint] = field(
        default_factory=lambda: MappingProxyType({})
    )
    consequential_tools: tuple[str, ...] = (
        "send_*",
        "delete_*",
        "pay_*",
        "refund_*",
        "write_*",
        "transfer_*",
    )
    builtin_tools: tuple[str, ...] = BUILTIN_TOOLS
    session_cost_usd: float | None = None
    session_tokens: int | None = None
    thresholds: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    severity: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # detector -> SEV
    actions: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # SEV -> action

    def threshold(self, detector: str, key: str, default: float) -> float:
        return self.thresholds.get(detector, {}).get(key, default)

    def is_consequential(self, tool: str) -> bool:
        return any(fnmatchcase(tool, pattern) for pattern in self.consequential_tools)

    def is_builtin(self, tool: str) -> bool:
        return any(fnmatchcase(tool, pattern) for pattern in self.builtin_tools)

    def allows(self, tool: str) -> bool:
        """True when no scope is declared, or the tool matches an allowed glob or is built in."""
        if self.allowed_tools is None or self.is_builtin(tool):
            return True
        return any(fnmatchcase(tool, pattern) for pattern in self.allowed_tools)


DEFAULT_POLICY = AgentPolicy()
