"""Policy flips the switches: incident rows in, controls out.

Two automatic paths, both listening to stored incident rows (``Collector.incident_listeners``):

1. **Policy actions.** When an incident opens or escalates, the agent's policy names an action
   for its detector or SEV (``actions: {SEV1: pause_session, loop: freeze_session}``):
   ``pause_session``, ``freeze_session``, ``quarantine_user``, ``open_tool_circuit``,
   ``kill_agent`` or ``none``.
2. **Tool circuit breaker.** When findings on one tool come from ``tool_circuit.sessions``
   distinct sessions within ``tool_circuit.window_s``, that tool's circuit opens for the agent,
   the service or everyone (``tool_circuit.scope``).

Nothing is automatic without a policy file: with none (``DEFAULT_POLICY``) incidents open and
page, and only a person stops anything. Stopping a tool in production is a decision its owners
make in writing, not a default they discover at 2 am.

**The run in progress.** With the OTel GenAI instrumentation the session id is on the root span,
which is exported last, so an incident opened mid-run often has no session or user yet. A
session- or user-scoped action (``pause_session``, ``freeze_session``, ``quarantine_user``) then
falls back to the incident's trace: the agent checking with its current trace id is stopped
mid-run. When the incident is later ``attributed`` (a late span tells its session and user), the
action is applied to the session or user too, once per incident.

Each automatic change is stored as a control with source ``policy`` (so the audit trail says who),
and recorded on its incident as a ``contained`` event. Automatic actions only ever tighten: they
never lift or loosen a control, and nothing here undoes one; a person resumes
(``agentwatch resume``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from time import time_ns

from analyzer.containment.control import (
    CIRCUIT_OPEN,
    SCOPE_COLUMNS,
    ControlBoard,
    ControlError,
    Scope,
    trace_id_of,
)
from analyzer.incidents.model import IncidentEvent, IncidentRecord, IncidentRows
from analyzer.policy import DEFAULT_POLICY, AgentPolicy

log = logging.getLogger("agentwatch.containment")

#: Policy action -> (mode, the scope fields taken from the incident)
ACTIONS = {
    "pause_session": ("paused", ("session",)),
    "freeze_session": ("budget_frozen", ("session",)),
    "quarantine_user": ("quarantined", ("user",)),
    "open_tool_circuit": (CIRCUIT_OPEN, ("agent", "tool")),
    "kill_agent": ("killed", ("service", "agent")),
}
#: scope field -> the ``IncidentRecord`` field it is taken from (the incidents table names its
#: columns as control_state does)
_RECORD_FIELD = SCOPE_COLUMNS
_CIRCUIT_SCOPE = {
    "agent": ("service", "agent", "tool"),
    "service": ("service", "tool"),
    "global": ("tool",),
}


def _scope(record: IncidentRecord, names: tuple[str, ...]) -> Scope:
    """The scope of an automatic action: always within the incident's tenant (a tenant's
    incident never stops another tenant's agents, whatever the policy's scope says), and a
    gameday drill's within its service (its own, ``gameday-<drill id>``, unless the drill named
    a real one): a drill rehearses the automation without stopping production."""
    if record.drill and "service" not in names:
        names = (*names, "service")
    return Scope(tenant=record.tenant, **{n: getattr(record, _RECORD_FIELD[n]) for n in names})


_TRIGGERS = ("opened", "escalated")  # an incident's first finding, or a worse one
_FINDINGS = ("opened", "updated", "escalated")  # one event per finding
#: a late span told the incident's session and/or user (the record now has them)
ATTRIBUTED = "attributed"
#: actions on the run's subject that stop the run's trace while that subject is unknown
_TRACE_FALLBACK = frozenset({("session",), ("user",)})
#: how many (incident, scope) pairs acted on are remembered, so ``attributed`` applies an action
#: once (the board's own no-op for a control already as strict covers anything forgotten)
MAX_REMEMBERED = 10_000


class Containment:
    """An incident listener that applies policy actions and runs the tool circuit breakers."""

    def __init__(
        self,
        board: ControlBoard,
        policy_for: Callable[[str, str], AgentPolicy],
        write_events: Callable[[list[IncidentEvent]], Awaitable[None]],
    ) -> None:
        self.board = board
        self.policy_for = policy_for
        # the notes on the incidents -> incident_events (``IncidentRepository.append_events``)
        self.write_events = write_events
        # (scope key of the circuit) -> deque of (time_ns, session) of recent findings on the tool
        self._tool_findings: dict[tuple[str, ...], deque[tuple[int, str]]] = {}
        # (incident id, scope key) -> None: policy actions taken, oldest first
        self._acted: dict[tuple[str, str], None] = {}

    async def __call__(self, rows: IncidentRows) -> None:
        latest = {record.incident_id: record for record in rows.incidents}
        notes = []
        for event in rows.events:
            record = latest.get(event.incident_id)
            if record is None or (event.actor != "agentwatch" and event.event != ATTRIBUTED):
                continue  # a person's ack/resolve, or a row we cannot see
            policy = self.policy_for(record.service, record.agent)
            if event.event in _TRIGGERS:
                action = policy.action_for(record.detector, record.severity)
                trace = event.trace_id or record.trace_id
                notes.append(await self._act(action, record, policy, trace))
            elif event.event == ATTRIBUTED:
                action = policy.action_for(record.detector, record.severity)
                notes.append(await self._act_on_attribution(action, record, policy))
            if event.event in _FINDINGS and record.tool:
                session = event.session_id or record.session_id or record.trace_id
                notes.append(await self._count_tool_finding(record, session, policy))
        notes = [n for n in notes if n]
        if notes:
            await self.write_events(notes)

    async def _act(
        self, action: str, record: IncidentRecord, policy: AgentPolicy, trace: str
    ) -> IncidentEvent | None:
        if action not in ACTIONS:
            return None  # "none"
        mode, names = ACTIONS[action]
        why = _why(action, record, policy)
        missing = [n for n in names if not getattr(record, _RECORD_FIELD[n])]
        if not missing:
            return await self._apply(record, _scope(record, names), mode, why)
        if names in _TRACE_FALLBACK and trace:
            try:
                scope = Scope(tenant=record.tenant, trace=trace_id_of(trace))
            except ControlError as exc:
                return _note(record, f"policy action {action} not taken: {exc}")
            known = f"{mode} trace {scope.trace} (no {names[0]} known yet)"
            return await self._apply(record, scope, mode, why, known)
        return _note(
            record, f"policy action {action} not taken: the incident has no {', '.join(missing)}"
        )

    async def _act_on_attribution(
        self, action: str, record: IncidentRecord, policy: AgentPolicy
    ) -> IncidentEvent | None:
        """The incident now knows its session or user: apply a session or user action that could
        only stop the trace so far (once per incident; the trace's control stays)."""
        if action not in ACTIONS or ACTIONS[action][1] not in _TRACE_FALLBACK:
            return None
        mode, names = ACTIONS[action]
        if not getattr(record, _RECORD_FIELD[names[0]]):
            return None  # still unknown: the trace's control is what we have
        scope = _scope(record, names)
        if (record.incident_id, scope.key) in self._acted:
            return None  # taken when the incident opened or escalated, or already attributed
        why = _why(action, record, policy)
        known = f"{mode} {scope.key} (the {names[0]} became known after the incident opened)"
        return await self._apply(record, scope, mode, why, known)

    async def _count_tool_finding(
        self, record: IncidentRecord, session: str, policy: AgentPolicy
    ) -> IncidentEvent | None:
        needed = policy.tool_circuit_sessions
        if needed <= 0 or policy is DEFAULT_POLICY:  # no policy file: nothing automatic
            return None
        names = _CIRCUIT_SCOPE.get(policy.tool_circuit_scope, _CIRCUIT_SCOPE["agent"])
        scope = _scope(record, names)
        now = self.board.clock()
        recent = self._tool_findings.setdefault(names + (scope.key,), deque(maxlen=1000))
        recent.append((now, session))
        horizon = now - int(policy.tool_circuit_window_s * 1e9)
        while recent and recent[0][0] < horizon:
            recent.popleft()
        sessions = {session for _, session in recent}
        if len(sessions) < needed:
            return None
        why = (
            f"tool circuit breaker ({policy.rule}): findings on {record.tool} in {len(sessions)}"
            f" sessions within {policy.tool_circuit_window_s:g} s (latest: {record.detector},"
            f" incident {record.incident_id})"
        )
        recent.clear()
        return await self._apply(record, scope, CIRCUIT_OPEN, why)

    async def _apply(
        self, record: IncidentRecord, scope: Scope, mode: str, why: str, what: str = ""
    ) -> IncidentEvent | None:
        """Put ``scope`` in ``mode`` for the incident; the note says ``what`` (default: the mode
        and scope) and why, or why not."""
        try:
            changed = await self.board.set(
                scope, mode, actor="policy", source="policy", reason=why,
                incident_id=record.incident_id,
            )  # fmt: skip
        except ControlError as exc:
            return _note(record, f"containment not applied to {scope.key}: {exc}")
        except Exception as exc:  # the store refused: say so on the incident, try next time
            log.error("containment %s %s failed: %s", mode, scope.key, exc)
            return _note(record, f"containment {mode} {scope.key} failed to store: {exc}")
        self._remember(record.incident_id, scope.key)
        if changed is None:
            return None  # already as strict or stricter
        return _note(record, f"{what or f'{mode} {scope.key}'}: {why}")

    def _remember(self, incident_id: str, scope_key: str) -> None:
        self._acted[(incident_id, scope_key)] = None
        if len(self._acted) > MAX_REMEMBERED:
            del self._acted[next(iter(self._acted))]


def _why(action: str, record: IncidentRecord, policy: AgentPolicy) -> str:
    return (
        f"policy {policy.rule}: {record.detector}/{record.severity} -> {action}"
        f" (incident {record.incident_id}: {record.title})"
    )


def _note(record: IncidentRecord, detail: str) -> IncidentEvent:
    """A ``contained`` event on the incident, by the policy."""
    return contained_event(record.incident_id, record.fingerprint, "policy", detail)


def contained_event(incident_id: str, fingerprint: str, actor: str, detail: str) -> IncidentEvent:
    """The ``contained`` event on an incident's timeline: a control set for it, by the policy or
    by a person (the console's contain buttons, ``agentwatch pause ... --incident ID``)."""
    return IncidentEvent(
        incident_id=incident_id,
        fingerprint=fingerprint,
        at_ns=time_ns(),
        event="contained",
        actor=actor,
        detail=detail[:2000],
    )
