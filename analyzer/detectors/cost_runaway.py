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
Signature: ``<agent>:<kind>``; each kind is reported once per session. Evidence: why it fired
(``analyzer.finding.explain``; ``rule`` ``budget_cost``, ``budget_tokens``, ``baseline`` or
``cold_start``, the default guard), the flagged step, then the session's spend.

A session is finished, and its cost joins its agent's baseline, once no LLM step of it was seen
for ``session_idle_s`` on the injected clock (checked on every step observed). Only finished
sessions count, unlike the token ratio's running ones: a running session's cost is a part of its
final cost (a ratio is not), so counting it would pull the median down and flag normal sessions.
The median is robust (a few runaways in the window do not move it); there is no spread term, the
rule is a multiple of it. ``seed(sessions, now_ns)`` adds the store's finished sessions
(``analyzer.baselines``: at start-up and every few minutes, so a restart or a second collector
starts warm); a session both seeded and seen here counts once, with the larger cost. State:

- per session: cost, tokens, LLM step count, flagged kinds (a few fields);
- per detector: the sessions not yet folded into a baseline, at most ``max_open`` (the least
  recently active is folded early beyond that), and one baseline of at most ``window`` costs for
  each of at most ``max_agents`` agents (the least recently used agent's is dropped beyond that),
  16 bytes a session: 3.2 KB an agent at the default 200.

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
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.detectors.seeding import StoredSession
from analyzer.finding import Finding, explain
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.session import SessionState

_SEVERITIES = ("SEV1", "SEV2", "SEV3")
_U32, _SECOND = 0xFFFF_FFFF, 1_000_000_000

AgentKey = tuple[str, str, str]  # tenant, service, agent


class _CostState:
    __slots__ = (
        "agent_key", "serial", "cost_usd", "tokens", "llm_steps", "last_ns", "folded", "flagged"
    )  # fmt: skip

    def __init__(self, agent_key: AgentKey) -> None:
        self.agent_key = agent_key
        self.serial = 0  # hash of the session's key (its identity in the baseline)
        self.cost_usd = 0.0
        self.tokens = 0
        self.llm_steps = 0
        self.last_ns = 0
        self.folded = False  # its cost already joined the baseline (later spend does not)
        self.flagged: tuple[str, ...] = ()  # kinds already reported in this session (rarely any)


class _Baseline:
    """The recent finished sessions' costs of one agent, and their median (kept up to date).

    One entry per session (``serials``): a session counted here and also in a seed from the store
    keeps its larger cost (cost only grows, so the larger is the more complete count). 16 bytes a
    session: its key's hash and its last activity (seconds) in 32 bits each are enough to tell
    200 sessions apart and to order them."""

    __slots__ = ("serials", "costs", "stamps", "median", "window")

    def __init__(self, window: int) -> None:
        self.serials = array("I")  # the sessions' key hashes (32 bits)
        self.costs = array("d")
        self.stamps = array("I")  # when each session was last active, in s (to merge a seed)
        self.median = 0.0
        self.window = window

    def add(self, serial: int, cost_usd: float, stamp: int) -> None:
        serial, stamp = serial & _U32, stamp // _SECOND
        try:
            i = self.serials.index(serial)  # O(window), once per finished session
        except ValueError:
            self.serials.append(serial)
            self.costs.append(cost_usd)
            self.stamps.append(stamp)
            if len(self.costs) > self.window:
                del self.serials[0], self.costs[0], self.stamps[0]
        else:
            self.costs[i] = max(self.costs[i], cost_usd)
        self.median = statistics.median(self.costs)  # once per finished session, not per step

    def seed(self, stored: list[tuple[int, float, int]]) -> None:
        """Merge stored finished sessions (serial, cost, stamp); keep the ``window`` latest."""
        merged = {
            serial: (stamp, cost)
            for serial, cost, stamp in zip(self.serials, self.costs, self.stamps, strict=True)
        }
        for serial, cost, stamp in stored:
            serial, stamp = serial & _U32, stamp // _SECOND
            known = merged.get(serial, (stamp, cost))
            merged[serial] = (max(stamp, known[0]), max(cost, known[1]))
        latest = sorted(merged.items(), key=lambda item: item[1][0])[-self.window :]
        self.serials = array("I", (serial for serial, _ in latest))
        self.costs = array("d", (cost for _, (_, cost) in latest))
        self.stamps = array("I", (stamp for _, (stamp, _) in latest))
        self.median = statistics.median(self.costs) if self.costs else 0.0


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
        state.serial = hash(session.key)  # the key may change (its session id arrived late)
        self._track(session.key, state)

        policy = session.policy
        budgets = policy.session_cost_usd is not None or policy.session_tokens is not None
        if budgets:
            if "budget_exceeded" in state.flagged:
                return None
            if policy.session_cost_usd is not None and state.cost_usd > policy.session_cost_usd:
                title = f"session cost ${state.cost_usd:.2f} over its ${policy.session_cost_usd:.2f} budget"
                limit = {"budget": "cost", "budget_usd": policy.session_cost_usd}
                why = explain(
                    why=f"{title} (policy session_cost_usd)",
                    rule="budget_cost",
                    threshold=policy.session_cost_usd,
                    observed=round(state.cost_usd, 6),
                )
            elif policy.session_tokens is not None and state.tokens > policy.session_tokens:
                title = (
                    f"session used {state.tokens} tokens, over its {policy.session_tokens} budget"
                )
                limit = {"budget": "tokens", "budget_tokens": policy.session_tokens}
                why = explain(
                    why=f"{title} (policy session_tokens)",
                    rule="budget_tokens",
                    threshold=policy.session_tokens,
                    observed=state.tokens,
                )
            else:
                return None
            return self._flag(session, state, "budget_exceeded", "SEV1", step, title, limit, why)

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
            why = explain(
                why=f"{title} over {len(baseline.costs)} sessions (the rule fires above"
                f" {factor:g}×: ${factor * base:.2f})",
                rule="baseline",
                threshold=round(factor * base, 6),
                observed=round(state.cost_usd, 6),
                baseline=round(base, 6),
            )
        else:
            guard = limits["default_session_cost_usd"]
            if state.cost_usd <= guard:
                return None
            title = f"session cost ${state.cost_usd:.2f}, over the default ${guard:.2f} guard (no baseline yet)"
            limit = {"default_session_cost_usd": guard}
            finished = len(baseline.costs) if baseline is not None else 0
            why = explain(
                why=f"session cost ${state.cost_usd:.2f} passed the default ${guard:.2f} guard,"
                f" judged without a baseline ({finished} of {limits['min_sessions']:g} finished"
                " sessions)",
                rule="cold_start",
                threshold=guard,
                observed=round(state.cost_usd, 6),
                cold_start=True,
            )
        return self._flag(session, state, "spend_anomaly", "SEV2", step, title, limit, why)

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
        self._baseline(state.agent_key).add(state.serial, state.cost_usd, state.last_ns)

    def _baseline(self, key: AgentKey) -> _Baseline:
        baseline = self._baselines.get(key)
        if baseline is None:
            baseline = self._baselines[key] = _Baseline(self.window)
            while len(self._baselines) > self.max_agents:
                self._baselines.popitem(last=False)
        else:
            self._baselines.move_to_end(key)
        return baseline

    def seed(self, sessions: list[StoredSession], now_ns: int) -> None:
        """Warm the baselines with stored sessions (``analyzer.baselines``), oldest first: those
        finished (no LLM step for ``session_idle_s`` before ``now_ns``), by agent, merged with the
        sessions this process folded (``_Baseline.seed``)."""
        by_agent: dict[AgentKey, list[tuple[int, float, int]]] = {}
        cutoff = now_ns - self.idle_ns
        for s in sessions:
            if s.last_seen_ns < cutoff:
                key = (s.tenant, s.service, s.agent)
                by_agent.setdefault(key, []).append((hash(s.key), s.cost_usd, s.last_seen_ns))
        for key, stored in by_agent.items():
            key = self._agent_keys.setdefault(key, key) if len(self._agent_keys) < 10_000 else key
            self._baseline(key).seed(stored[-self.window :])

    def _flag(
        self,
        session: SessionState,
        state: _CostState,
        kind: str,
        severity: str,
        step: Step,
        title: str,
        limit: dict,
        why: dict,
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
            evidence=(why, step.evidence(), spend),
        )
