"""Policy flips the switches: incident rows in, controls out.

Two automatic paths, both listening to stored incident rows (``Collector.incident_listeners``):

1. **Policy actions.** When an incident opens or escalates, the agent's policy names an action
   for its detector or SEV (``actions: {SEV1: pause_session, loop: freeze_session}``):
   ``pause_session``, ``freeze_session``, ``quarantine_user``, ``open_tool_circuit``,
   ``kill_agent`` or ``none``.
2. **Tool circuit breaker.** When findings on one tool come from ``tool_circuit.sessions``
   distinct sessions within ``tool_circuit.window_s``, that tool's circuit opens for the agent,
   the service or everyone (``tool_circuit.scope``).

Each automatic change is stored as a control with source ``policy`` (so the audit trail says who),
and recorded on its incident as a ``contained`` event. Automatic actions only ever tighten: they
never lift or loosen a control, and nothing here undoes one; a person resumes
(``agentwatch resume``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from time import time_ns

from analyzer.containment.control import CIRCUIT_OPEN, ControlBoard, ControlError, Scope
from analyzer.incidents.model import IncidentRows, utc_text
from analyzer.policy import AgentPolicy
from collector.store import insert_rows

log = logging.getLogger("agentwatch.containment")

#: Policy action -> (mode, the incident row's fields that make its scope)
ACTIONS = {
    "pause_session": ("paused", ("session",)),
    "freeze_session": ("budget_frozen", ("session",)),
    "quarantine_user": ("quarantined", ("user",)),
    "open_tool_circuit": (CIRCUIT_OPEN, ("agent", "tool")),
    "kill_agent": ("killed", ("service", "agent")),
}
_ROW_FIELD = {
    "tenant": "tenant",
    "service": "service",
    "agent": "agent",
    "session": "session_id",
    "user": "user_id",
    "tool": "tool",
}
_CIRCUIT_SCOPE = {
    "agent": ("service", "agent", "tool"),
    "service": ("service", "tool"),
    "global": ("tool",),
}


def _scope(row: dict, names: tuple[str, ...]) -> Scope:
    """The scope of an automatic action: always within the incident's tenant (a tenant's
    incident never stops another tenant's agents, whatever the policy's scope says)."""
    return Scope(tenant=row.get("tenant", ""), **{n: row[_ROW_FIELD[n]] for n in names})


_TRIGGERS = ("opened", "escalated")  # an incident's first finding, or a worse one
_FINDINGS = ("opened", "updated", "escalated")  # one event per finding


class Containment:
    """An incident listener that applies policy actions and runs the tool circuit breakers."""

    def __init__(
        self,
        board: ControlBoard,
        policy_for: Callable[[str, str], AgentPolicy],
        write_events: Callable,
    ) -> None:
        self.board = board
        self.policy_for = policy_for
        self.write_events = write_events  # async (list of incident_events rows) -> None
        # (scope key of the circuit) -> deque of (time_ns, session) of recent findings on the tool
        self._tool_findings: dict[tuple[str, ...], deque[tuple[int, str]]] = {}

    async def __call__(self, rows: IncidentRows) -> None:
        latest = {record.incident_id: record.row() for record in rows.incidents}
        notes = []
        for event in (e.row() for e in rows.events):
            row = latest.get(event["incident_id"])
            if row is None or event["actor"] != "agentwatch":
                continue  # a person's ack/resolve, or a row we cannot see
            policy = self.policy_for(row["service"], row["agent"])
            if event["event"] in _TRIGGERS:
                action = policy.action_for(row["detector"], row["severity"])
                notes.append(await self._act(action, row, policy))
            if event["event"] in _FINDINGS and row.get("tool"):
                session = event.get("session_id") or row["session_id"] or row["trace_id"]
                notes.append(await self._count_tool_finding(row, session, policy))
        notes = [n for n in notes if n]
        if notes:
            await self.write_events(notes)

    async def _act(self, action: str, row: dict, policy: AgentPolicy) -> dict | None:
        if action not in ACTIONS:
            return None  # "none"
        mode, names = ACTIONS[action]
        missing = [n for n in names if not row[_ROW_FIELD[n]]]
        if missing:
            return _note(
                row, f"policy action {action} not taken: the incident has no {', '.join(missing)}"
            )
        scope = _scope(row, names)
        why = (
            f"policy {policy.rule}: {row['detector']}/{row['severity']} -> {action}"
            f" (incident {row['incident_id']}: {row['title']})"
        )
        return await self._apply(row, scope, mode, why)

    async def _count_tool_finding(
        self, row: dict, session: str, policy: AgentPolicy
    ) -> dict | None:
        needed = policy.tool_circuit_sessions
        if needed <= 0:
            return None
        names = _CIRCUIT_SCOPE.get(policy.tool_circuit_scope, _CIRCUIT_SCOPE["agent"])
        scope = _scope(row, names)
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
            f"tool circuit breaker ({policy.rule}): findings on {row['tool']} in {len(sessions)}"
            f" sessions within {policy.tool_circuit_window_s:g} s (latest: {row['detector']},"
            f" incident {row['incident_id']})"
        )
        recent.clear()
        return await self._apply(row, scope, CIRCUIT_OPEN, why)

    async def _apply(self, row: dict, scope: Scope, mode: str, why: str) -> dict | None:
        try:
            changed = await self.board.set(
                scope, mode, actor="policy", source="policy", reason=why,
                incident_id=row["incident_id"],
            )  # fmt: skip
        except ControlError as exc:
            return _note(row, f"containment not applied to {scope.key}: {exc}")
        except Exception as exc:  # the store refused: say so on the incident, try next time
            log.error("containment %s %s failed: %s", mode, scope.key, exc)
            return _note(row, f"containment {mode} {scope.key} failed to store: {exc}")
        if changed is None:
            return None  # already as strict or stricter
        return _note(row, f"{mode} {scope.key}: {why}")


def _note(row: dict, detail: str) -> dict:
    return {
        "incident_id": row["incident_id"],
        "fingerprint": row["fingerprint"],
        "at": utc_text(time_ns()),
        "event": "contained",
        "actor": "policy",
        "detail": detail,
    }


def store_events(store, run_store):
    """``incident_events`` rows -> the store (the containment's notes on its incidents)."""

    async def write(events: list[dict]) -> None:
        await run_store(insert_rows, store, "incident_events", events)

    return write
