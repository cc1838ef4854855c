"""``Finding``: what a detector reports about one step; incidents are built from findings.

Every finding explains itself: its first evidence item is ``explain(...)``, the same keys from
every detector, so on-call can judge a false alarm in seconds (README "Why an incident fired"):

- ``why``: one sentence with the numbers, e.g. "search was called 4 times with the same
  arguments and result; the rule fires at 4";
- ``rule``: which of the detector's rules fired (``repeated_call``, ``rate``, ``cold_start`` …);
- ``threshold``: the value at which the rule fires (a number, the allowed scope for a scope rule,
  or a mapping of named values when the rule has several);
- ``observed``: the value seen, in the same shape as ``threshold``;
- ``baseline``: the agent's normal value the threshold was derived from (only when there is one);
- ``cold_start``: ``True`` when judged by a fixed guard because the baseline was not warm yet
  (absent otherwise).

A detector may add its own measurements to the same item (keyword arguments after these);
its other evidence items (the flagged step, samples) follow.

>>> explain(why="4 identical calls", rule="repeated_call", threshold=4, observed=4, tool="search")
{'why': '4 identical calls', 'rule': 'repeated_call', 'threshold': 4, 'observed': 4, 'tool': 'search'}
>>> explain(why="w", rule="cold_start", threshold=500, observed=900, baseline=20, cold_start=True)
{'why': 'w', 'rule': 'cold_start', 'threshold': 500, 'observed': 900, 'baseline': 20, 'cold_start': True}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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


#: the keys of the first evidence item of every finding, in order (``explain``)
WHY_KEYS = ("why", "rule", "threshold", "observed")


def explain(
    *,
    why: str,
    rule: str,
    threshold: Any,
    observed: Any,
    baseline: Any = None,
    cold_start: bool = False,
    **measures: Any,
) -> dict:
    """The first evidence item of a finding: why it fired (the keys: the module docstring)."""
    item = {"why": why, "rule": rule, "threshold": threshold, "observed": observed}
    if baseline is not None:
        item["baseline"] = baseline
    if cold_start:
        item["cold_start"] = True
    item.update(measures)
    return item
