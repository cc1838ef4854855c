"""What the paging stages pass along: notifications (outbox rows) and firings, no I/O.

A **notification** is one row of ``page_outbox`` (its newest version): an action for one
(route, receiver, incident), ``pending`` until the retry stage settles it. A **firing** is a
(route, receiver, incident) that has fired and not resolved: what the repeat stage re-sends and
what an acknowledge or resolve goes to. Both carry the incident as the typed
``IncidentRecord``, as the notifiers read it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from analyzer.incidents.model import IncidentEvent, IncidentRecord

Key = tuple[str, str, str]  # (route, receiver, incident_id): sends to one key go in order

# The incident_events row a settled notification adds to its incident's timeline.
PAGE_EVENT = {"trigger": "paged", "acknowledge": "page_acknowledged", "resolve": "page_resolved"}


@dataclass
class Notification:
    """One outbox row (its newest version)."""

    notification_id: str
    route: str
    receiver: str
    action: str  # trigger | acknowledge | resolve
    incident: IncidentRecord
    created_ns: int
    receiver_type: str = ""
    reason: str = ""  # "" (an incident event), "repeat" (re-sent while firing) or "test"
    note: str = ""
    status: str = "pending"  # pending | sent | failed | skipped | superseded
    attempts: int = 0
    next_attempt_ns: int = 0
    sent_ns: int = 0
    last_error: str = ""
    version: int = 0
    in_flight: bool = False

    @property
    def key(self) -> Key:
        return (self.route, self.receiver, self.incident.incident_id)

    @staticmethod
    def new_id() -> str:
        return f"ntf-{uuid.uuid4().hex[:16]}"


@dataclass
class Firing:
    """A (route, receiver, incident) that has fired and not resolved."""

    route: str
    receiver: str
    incident: IncidentRecord
    paged: bool = False  # a trigger was enqueued
    acknowledged: bool = False
    last_trigger_ns: int = 0
    noted_silence: str = ""  # the silence whose page_silenced event was written
    enqueued: list[str] = field(default_factory=list)  # notification ids, oldest first

    @property
    def key(self) -> Key:
        return (self.route, self.receiver, self.incident.incident_id)


class FiringTable:
    """The firings, by incident (an event concerns every route that incident went to)."""

    def __init__(self) -> None:
        self._by_incident: dict[str, dict[tuple[str, str], Firing]] = {}

    def __iter__(self) -> Iterator[Firing]:
        return (f for mine in list(self._by_incident.values()) for f in list(mine.values()))

    def __len__(self) -> int:
        return sum(len(mine) for mine in self._by_incident.values())

    def of_incident(self, incident_id: str) -> list[Firing]:
        return list(self._by_incident.get(incident_id, {}).values())

    def add(self, firing: Firing) -> None:
        mine = self._by_incident.setdefault(firing.incident.incident_id, {})
        mine[(firing.route, firing.receiver)] = firing

    def remove(self, firing: Firing) -> None:
        mine = self._by_incident.get(firing.incident.incident_id, {})
        mine.pop((firing.route, firing.receiver), None)
        if not mine:
            self._by_incident.pop(firing.incident.incident_id, None)


@dataclass
class Changes:
    """What one decision produced, written together: new and changed notifications, and
    incident events (``page_silenced`` …)."""

    new: list[Notification] = field(default_factory=list)
    changed: list[Notification] = field(default_factory=list)
    events: list[IncidentEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.events)


def page_event(who: Notification | Firing, event: str, detail: str, now_ns: int) -> IncidentEvent:
    """A paging entry of the incident's timeline; the actor is ``route/receiver``."""
    return IncidentEvent(
        incident_id=who.incident.incident_id,
        fingerprint=who.incident.fingerprint,
        at_ns=now_ns,
        event=event,
        actor=f"{who.route}/{who.receiver}",
        detail=detail,
    )


def incident_for_test_page(now_ns: int) -> IncidentRecord:
    """The incident a test page carries: plainly a test, with every field a real one has."""
    return IncidentRecord(
        incident_id=f"test-{uuid.uuid4().hex[:12]}",
        fingerprint=f"test-{uuid.uuid4().hex[:12]}",
        version=now_ns,
        detector="test",
        kind="test_page",
        incident_class="infrastructure",
        severity="SEV3",
        status="open",
        title="agentwatch test page (resolves itself)",
        summary="Sent by `agentwatch alerts test`: the route and the receiver work.",
        tenant="",
        service="agentwatch",
        agent="",
        session_id="",
        user_id="",
        trace_id="",
        span_id="",
        tool="",
        evidence=(),
        first_seen_ns=now_ns,
        last_seen_ns=now_ns,
        occurrences=0,
        sessions_affected=0,
        users_affected=0,
        link="",
    )
