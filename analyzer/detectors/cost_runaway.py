"""Cost runaway: a session spending past its budget, or far past what its agent usually spends.

Usage is summed over LLM steps only (``step.kind == "llm"``): some frameworks repeat it on agent
spans, which would count it twice. Two kinds:

- ``budget_exceeded`` (SEV1, a hard budget breach while running): the session's cost passes the
  policy's ``session_cost_usd``, or its tokens (input + output) pass ``session_tokens``. Flagged at
  the LLM step that crosses the budget.
- ``spend_anomaly`` (SEV2), only when the policy declares no budget: the session's cost passes
  ``factor`` (default 10) × its agent's baseline session cost. The baseline is the median cost of
  the agent's last ``window`` finished sessions, keyed by (tenant, service, agent) so tenants
  never mix; it needs ``min_sessions`` (default 20) finished sessions before it is used. Until
  then an absolute guard applies: cost past ``default_session_cost_usd`` (default 5 USD). A
  baseline below ``min_baseline_usd`` is raised to it, so agents that usually cost next to nothing
  are not flagged for a few cents.

``factor``, ``min_sessions`` and ``default_session_cost_usd`` are ``CostRunawayThresholds``
(defaults there; the constructor takes them as keywords), overridden per agent by policy
``thresholds.cost_runaway``; a policy ``severity`` override for ``cost_runaway`` wins.
Signature: ``<agent>:<kind>``; each kind is reported once per session.

A session is finished, and its cost joins its agent's baseline, once no LLM step of it was seen
for ``session_idle_s`` on the injected clock (checked on every step observed). State:

- per session: cost, tokens, LLM step count, flagged kinds (a few fields);
- per detector: the sessions not yet folded into a baseline, at most ``max_open`` (the least
  recently active is folded early beyond that), and one baseline of at most ``window`` costs for
  each of at most ``max_agents`` agents (the least recently used agent's is dropped beyond that).

>>> from analyzer.policy import AgentPolicy
>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> policy = AgentPolicy(session_cost_usd=1.0)
>>> sessions = SessionTable(policy_for=lambda service, agent: policy)
>>> detector = CostRunawayDetector()
>>> def step(t, kind, cost):
...     s = Step(t, 1, "acme", "svc", "support", "s1", "u1", "t1", f"span{t}", "", kind,
...              model="gpt-4o", input_tokens=1000, output_tokens=100, cost_usd=cost)
...     return detector.observe(s, sessions.for_step(s, t), t)
>>> [step(1, "llm", 0.4), step(2, "agent", 0.8), step(3, "llm", 0.4)]  # agent usage: not counted
[None, None, None]
>>> finding = step(4, "llm", 0.4)
>>> finding.kind, finding.severity, finding.signature, finding.step.span_id
('budget_exceeded', 'SEV1', 'support:budget_exceeded', 'span4')
>>> step(5, "llm", 0.4) is None  # once per session
True
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.finding import Finding
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.session import SessionState

_SEVERITIES = ("SEV1", "SEV2", "SEV3")

AgentKey = tuple[str, str, str]  # tenant, service, agent


class _CostState:
    __slots__ = ("agent_key", "cost_usd", "tokens", "llm_steps", "last_ns", "folded", "flagged")

    def __init__(self, agent_key: AgentKey) -> None:
        self.agent_key = agent_key
        self.cost_usd = 0.0
        self.tokens = 0
        self.llm_steps = 0
        self.last_ns = 0
        self.folded = False  # its cost already joined the baseline (later spend does not)
        self.flagged: tuple[str, ...] = ()  # kinds already reported in this session (rarely any)


class _Baseline:
    """The recent finished sessions' costs of one agent, and their median (kept up to date)."""

    __slots__ = ("costs", "median")

    def __init__(self, window: int) -> None:
        self.costs: deque[float] = deque(maxlen=window)
        self.median = 0.0

    def add(self, cost_usd: float) -> None:
        self.costs.append(cost_usd)
        self.median = statistics.median(self.costs)  # once per finished session, not per step


class CostRunawayThresholds(DetectorThresholds):
    """Thresholds of the cost runaway detector (policy ``thresholds.cost_runaway``)."""

    factor: float = Field(10.0, gt=1, description="session cost this many times the agent's median")
    min_sessions: int = Field(20, ge=1, description="finished sessions before the baseline is used")
    default_session_cost_usd: float = Field(5.0, ge=0, description="cost guard without a baseline")


class CostRunawayDetector:
    name = "cost_runaway"
    kinds = frozenset({"llm"})  # the engine asks this detector about LLM steps only
    thresholds_model = CostRunawayThresholds

    def __init__(
        self,
        *,
        min_baseline_usd: float = 0.05,
        window: int = 200,
        session_idle_s: float = 1800.0,
        max_open: int = 100_000,
        max_agents: int = 10_000,
        **thresholds: float,
    ) -> None:
        self.thresholds = CostRunawayThresholds(**thresholds)
        self.limits = ResolvedThresholds(self.name, self.thresholds)
        self.min_baseline_usd = min_baseline_usd
        self.window = max(window, self.thresholds.min_sessions)
        self.idle_ns = int(session_idle_s * 1e9)
        self.max_open = max_open
        self.max_agents = max_agents
        self._open: OrderedDict[tuple[str, str], _CostState] = OrderedDict()  # by last LLM step
        self._agent_keys: dict[AgentKey, AgentKey] = {}
        self._folded_at = -1
        self._baselines: OrderedDict[AgentKey, _Baseline] = OrderedDict()

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None:
        self._fold_idle(now_ns)
        if step.kind != "llm":
            return None
        state: _CostState = session.detectors.get(self.name)
        if state is None:
            state = session.detectors[self.name] = self._new_state(session)
        if not state.agent_key[2] and session.agent:
            state.agent_key = (state.agent_key[0], session.service, session.agent)
        state.cost_usd += step.cost_usd
        state.tokens += step.input_tokens + step.output_tokens
        state.llm_steps += 1
        state.last_ns = max(state.last_ns, step.time_ns, now_ns)
        self._track(session.key, state)

        policy = session.policy
        budgets = policy.session_cost_usd is not None or policy.session_tokens is not None
        if budgets:
            if "budget_exceeded" in state.flagged:
                return None
            if policy.session_cost_usd is not None and state.cost_usd > policy.session_cost_usd:
                title = f"session cost ${state.cost_usd:.2f} over its ${policy.session_cost_usd:.2f} budget"
                limit = {"budget": "cost", "budget_usd": policy.session_cost_usd}
            elif policy.session_tokens is not None and state.tokens > policy.session_tokens:
                title = (
                    f"session used {state.tokens} tokens, over its {policy.session_tokens} budget"
                )
                limit = {"budget": "tokens", "budget_tokens": policy.session_tokens}
            else:
                return None
            return self._flag(session, state, "budget_exceeded", "SEV1", step, title, limit)

        if "spend_anomaly" in state.flagged:
            return None
        baseline = self._baselines.get(state.agent_key)
        limits = self.limits(policy)
        if baseline is not None and len(baseline.costs) >= min(limits["min_sessions"], self.window):
            self._baselines.move_to_end(state.agent_key)
            factor = limits["factor"]
            base = max(baseline.median, self.min_baseline_usd)
            if state.cost_usd <= factor * base:
                return None
            title = f"session cost ${state.cost_usd:.2f}, {state.cost_usd / base:.0f}× its agent's usual ${base:.2f}"
            limit = {
                "baseline_usd": base,
                "factor": factor,
                "baseline_sessions": len(baseline.costs),
            }
        else:
            guard = limits["default_session_cost_usd"]
            if state.cost_usd <= guard:
                return None
            title = f"session cost ${state.cost_usd:.2f}, over the default ${guard:.2f} guard (no baseline yet)"
            limit = {"default_session_cost_usd": guard}
        return self._flag(session, state, "spend_anomaly", "SEV2", step, title, limit)

    def _new_state(self, session: SessionState) -> _CostState:
        key = (session.key[0], session.service, session.agent)
        # one tuple per agent, shared by its sessions (agents are few, sessions many)
        return _CostState(
            self._agent_keys.setdefault(key, key) if len(self._agent_keys) < 10_000 else key
        )

    def _track(self, key: tuple[str, str], state: _CostState) -> None:
        """Keep the session among the open ones (most recent last); fold the oldest beyond the cap."""
        tracked = self._open.get(key)
        if tracked is not state:
            if tracked is not None:  # the session table forgot it and began a new one: fold the old
                self._fold(tracked)
            if state.folded:
                return  # spend after it was counted as finished: judged, never counted again
            self._open[key] = state
        self._open.move_to_end(key)
        while len(self._open) > self.max_open:
            self._fold(self._open.popitem(last=False)[1])

    def _fold_idle(self, now_ns: int) -> None:
        if now_ns == self._folded_at:
            return  # once per clock tick: a batch shares one clock
        self._folded_at = now_ns
        cutoff = now_ns - self.idle_ns
        while self._open:
            oldest = next(iter(self._open.values()))
            if oldest.last_ns >= cutoff:
                break
            self._open.popitem(last=False)
            self._fold(oldest)

    def _fold(self, state: _CostState) -> None:
        if state.folded:
            return
        state.folded = True
        baseline = self._baselines.get(state.agent_key)
        if baseline is None:
            baseline = self._baselines[state.agent_key] = _Baseline(self.window)
            while len(self._baselines) > self.max_agents:
                self._baselines.popitem(last=False)
        else:
            self._baselines.move_to_end(state.agent_key)
        baseline.add(state.cost_usd)

    def _flag(
        self,
        session: SessionState,
        state: _CostState,
        kind: str,
        severity: str,
        step: Step,
        title: str,
        limit: dict,
    ) -> Finding:
        state.flagged += (kind,)
        override = session.policy.severity.get(self.name)
        agent = session.agent or step.agent or session.service
        spend = {
            "cost_usd": round(state.cost_usd, 6),
            "tokens": state.tokens,
            "llm_steps": state.llm_steps,
            **limit,
        }
        return Finding(
            detector=self.name,
            kind=kind,
            incident_class="semantic",
            severity=override if override in _SEVERITIES else severity,
            title=f"{agent}: {title}",
            step=step,
            signature=f"{agent}:{kind}",
            evidence=(step.evidence(), spend),
        )
