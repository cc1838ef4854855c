"""``StoredSession``: one recent session as ClickHouse saw it, a detector's baseline seed.

The baselines (token ratio, spend) are learned from sessions. A collector that restarts, or a
second collector on the same store, would otherwise start them cold; ``analyzer.baselines``
reads the recent sessions back from ``agent_spans`` (one aggregate query) and hands them to each
detector's ``seed(sessions)``. This module is only the record, so the detectors (pure: no store)
and the query agree on it without the detectors importing the store.

The fields are what the detectors compute from steps, summed over the session:

- ``session``: the session table's key, the session id, or ``trace:<trace id>`` without one;
- ``service``, ``agent``: the session's (its first step's service, its first agent name);
- ``llm_service``, ``llm_agent``, ``model``: its first LLM step with input tokens (the token ratio
  baseline's key; ``llm_agent`` falls back to ``agent``);
- ``input_tokens``, ``output_tokens``, ``llm_steps``: over LLM steps with input tokens;
- ``cost_usd``: over all LLM steps; ``last_seen_ns``: the span time of its latest LLM step.

Sessions come oldest activity first, the order a baseline window keeps them in.

>>> s = StoredSession("acme", "s1", "svc", "bot", "svc", "bot", "gpt-4o", 6000, 100, 3, 0.02, 10**18)
>>> s.key, s.input_tokens / s.output_tokens
(('acme', 's1'), 60.0)
"""

from __future__ import annotations

from typing import NamedTuple


class StoredSession(NamedTuple):
    tenant: str
    session: str
    service: str
    agent: str
    llm_service: str
    llm_agent: str
    model: str
    input_tokens: int
    output_tokens: int
    llm_steps: int
    cost_usd: float
    last_seen_ns: int

    @property
    def key(self) -> tuple[str, str]:
        """The session table's key for it (``SessionState.key``)."""
        return self.tenant, self.session
