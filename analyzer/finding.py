"""``Finding``: what a detector reports about one step; incidents are built from findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from analyzer.step import Step

IncidentClass = Literal["infrastructure", "semantic"]
Severity = Literal["SEV1", "SEV2", "SEV3"]


@dataclass(frozen=True, slots=True)
class Finding:
    detector: (
        str  # loop, context_growth, token_ratio, out_of_scope_tool, cost_runaway, infrastructure
    )
    kind: str  # the finer cause: repeated_call, cycle, rate_limit, provider_5xx, …
    incident_class: IncidentClass
    severity: Severity
    title: str
    step: Step  # the flagged step: where the agent went off the rails
    signature: str  # stable labels for the fingerprint (a tool name, a status): never ids or times
    evidence: tuple[dict, ...] = field(default=())
