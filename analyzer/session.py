"""Bounded per-session state for the detectors.

A session is keyed by (tenant, session id). A step that carries no session id, and whose trace was
not seen with one, is keyed by its trace, or, when it names a user, by that user's current *run*
(the user's steps with no session, a new run after ``user_gap_s`` of event time without one: bare
instrumentations such as OpenLLMetry without traceloop-sdk make every chat call a trace of its own
and name only the user). The session id often arrives last (the OTel GenAI instrumentation puts
``gen_ai.conversation.id`` on the root span, exported after its children): when it does, the
state kept under the trace moves to the session, so one run stays one session for the detectors
(if the session already has state, from an earlier run, the trace's state is left to age out:
detector states are not merged). State is bounded two ways:

- a TTL: a session silent for ``ttl_s`` is forgotten;
- a cap: beyond ``max_sessions`` live sessions the least recently active one is forgotten.

Forgetting a session drops its detectors' counters (a half-seen loop starts again from zero) and
its flagged signatures (so a later repeat may open, or rather update, the same incident: incidents
are deduplicated by fingerprint, so nothing pages twice). The trace -> session map used to place
children that arrive after their root lost the session id is bounded by the same cap.
"""

from __future__ import annotations

from collections import OrderedDict

from analyzer.policy import DEFAULT_POLICY, AgentPolicy
from analyzer.step import Step


class SessionState:
    __slots__ = ("key", "service", "agent", "user", "first_ns", "last_ns", "detectors", "policy")

    def __init__(
        self, key: tuple[str, str], step: Step, policy: AgentPolicy = DEFAULT_POLICY
    ) -> None:
        self.policy = policy  # the agent's rule, resolved once when the session is first seen
        self.key = key
        self.service = step.service
        self.agent = step.agent
        self.user = step.user
        self.first_ns = step.time_ns
        self.last_ns = 0  # arrival time of the latest step (the TTL runs on arrival, not span time)
        self.detectors: dict[str, object] = {}  # each detector's own small state, by detector name

    def state(self, detector: str, factory):
        """This detector's state for the session, created by ``factory()`` on first use."""
        found = self.detectors.get(detector)
        if found is None:
            found = self.detectors[detector] = factory()
        return found


class SessionTable:
    def __init__(
        self,
        ttl_s: float = 1800.0,
        max_sessions: int = 100_000,
        policy_for=None,
        user_gap_s: float = 1800.0,
    ) -> None:
        self._policy_for = policy_for or (lambda service, agent: DEFAULT_POLICY)
        self.ttl_ns = int(ttl_s * 1e9)
        self.max_sessions = max_sessions
        self.user_gap_ns = int(user_gap_s * 1e9)
        self._sessions: OrderedDict[tuple[str, str], SessionState] = OrderedDict()
        self._trace_session: OrderedDict[str, str] = OrderedDict()
        # (tenant, user) -> [run key, event time of its latest step], for steps with no session
        self._user_runs: OrderedDict[tuple[str, str], list] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def policy_for(self, service: str, agent: str) -> AgentPolicy:
        """The policy rule a new session of this agent gets now."""
        return self._policy_for(service, agent)

    def for_step(self, step: Step, now_ns: int) -> SessionState:
        """The step's session (created if new); fills ``step.session`` from its trace if known."""
        traces = self._trace_session
        if step.session:
            # oldest first by when the trace was first (or differently) seen: traces are short
            if traces.get(step.trace_id) != step.session:
                traces[step.trace_id] = step.session
                traces.move_to_end(step.trace_id)
                if len(traces) > self.max_sessions:
                    traces.popitem(last=False)
                self._adopt_trace(step)
            key = (step.tenant, step.session)
        else:
            step.session = traces.get(step.trace_id, "")
            if step.session:
                key = (step.tenant, step.session)
            elif step.user:
                key = (step.tenant, self._user_run(step))
            else:
                key = (step.tenant, f"trace:{step.trace_id}")
        state = self._sessions.get(key)
        if state is None:
            policy = self._policy_for(step.service, step.agent)
            state = self._sessions[key] = SessionState(key, step, policy)
            state.last_ns = now_ns
            self._evict(now_ns)  # after the new session is stamped, so it is never its own victim
        else:
            if state.last_ns != now_ns:  # once per batch is enough: a batch shares one clock
                self._sessions.move_to_end(key)
            if step.user and not state.user:
                state.user = step.user
            if step.agent and not state.agent:
                state.agent = step.agent
            elif not step.agent:
                step.agent = state.agent  # a child step that names no agent acts for its session's
        state.last_ns = now_ns
        return state

    def _adopt_trace(self, step: Step) -> None:
        """The trace's session is now known: its state, kept under the trace so far, moves there."""
        old = (step.tenant, f"trace:{step.trace_id}")
        if old not in self._sessions:
            return
        new = (step.tenant, step.session)
        if new in self._sessions:
            return  # the session has state already (an earlier run): the trace's ages out
        state = self._sessions.pop(old)
        state.key = new
        self._sessions[new] = state

    def _user_run(self, step: Step) -> str:
        """The key of the user's current run: a new one after ``user_gap_ns`` of event time."""
        user = (step.tenant, step.user)
        run = self._user_runs.get(user)
        if run is None or step.time_ns - run[1] > self.user_gap_ns:
            run = self._user_runs[user] = [f"user:{step.user}@{step.time_ns}", step.time_ns]
            if len(self._user_runs) > self.max_sessions:
                self._user_runs.popitem(last=False)
        else:
            run[1] = max(run[1], step.time_ns)
        self._user_runs.move_to_end(user)
        return run[0]

    def _evict(self, now_ns: int) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if len(self._sessions) > self.max_sessions or oldest.last_ns < now_ns - self.ttl_ns:
                self._sessions.popitem(last=False)
                self.evicted += 1
            else:
                break
