"""What the paging stages pass along: notifications (outbox rows) and firings, no I/O.

A **notification** is one row of ``page_outbox`` (its newest version): an action for one
(route, receiver, incident), ``pending`` until the retry stage settles it. A **firing** is a
(route, receiver, incident) that has fired and not resolved: what the repeat stage re-sends and
what an acknowledge or resolve goes to. Both carry the incident as the typed
``IncidentRecord``, as the notifiers read it.

One problem, one page: a run going wrong is often several incidents at once (a loop, a context
spiral, spend). An incident firing on a (route, receiver) where an incident of the same run
(``correlated``: the session, else the trace) has a live firing is **folded** into that page: its
firing is a member of the first incident's (``Firing.page``), which alone sends, at the worst
severity of its members, listing them all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from analyzer.incidents.model import SEVERITY_RANK, IncidentEvent, IncidentRecord

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
    status: str = "pending"  # pending | sent | failed | skipped | superseded | folded
    attempts: int = 0
    next_attempt_ns: int = 0
    sent_ns: int = 0
    last_error: str = ""
    version: int = 0
    in_flight: bool = False
    page_of: str = ""  # status 'folded': the incident whose page this one joined
    folded: tuple[IncidentRecord, ...] = ()  # the page's other incidents, as sent (not stored)

    @property
    def key(self) -> Key:
        return (self.route, self.receiver, self.incident.incident_id)

    @property
    def severity(self) -> str:
        """The page's: the worst of its incidents'."""
        return worst_severity(self.incident, *self.folded)

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
    page: Firing | None = None  # folded: the firing whose page carries this incident
    members: list[Firing] = field(default_factory=list)  # a page's folded firings, in order

    @property
    def key(self) -> Key:
        return (self.route, self.receiver, self.incident.incident_id)

    @property
    def folded(self) -> tuple[IncidentRecord, ...]:
        """The incidents folded into this firing's page (resolved ones too: the page lists them)."""
        return tuple(m.incident for m in self.members)

    @property
    def severity(self) -> str:
        """The page's severity: the worst of its incidents' (it never lowers, as an incident's)."""
        return worst_severity(self.incident, *self.folded)

    def live(self) -> bool:
        """A page is live while one of its incidents is not resolved."""
        return any(i.status != "resolved" for i in (self.incident, *self.folded))


class FiringTable:
    """The firings, by incident (an event concerns every route that incident went to)."""

    def __init__(self) -> None:
        self._by_incident: dict[str, dict[tuple[str, str], Firing]] = {}

    def __iter__(self) -> Iterator[Firing]:
        return (f for mine in list(self._by_incident.values()) for f in list(mine.values()))

    def __len__(self) -> int:
        return sum(len(mine) for mine in self._by_incident.values())

    def get(self, key: Key) -> Firing | None:
        return self._by_incident.get(key[2], {}).get(key[:2])

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

    def page_for(
        self, route: str, receiver: str, incident: IncidentRecord
    ) -> tuple[Firing | None, str]:
        """The live page on (route, receiver) of an incident of ``incident``'s run, and why
        (``same session …``); (None, "") when there is none. The oldest such page wins."""
        for firing in self:
            if firing.page is not None or (firing.route, firing.receiver) != (route, receiver):
                continue
            for member in (firing.incident, *firing.folded):
                why = correlated(incident, member)
                if why and member.incident_id != incident.incident_id:
                    return firing, why
        return None, ""


def correlated(a: IncidentRecord, b: IncidentRecord) -> str:
    """Why ``a`` and ``b`` are findings on one run, or one problem ("" if neither): the session is
    the correlation id when both know it, else the trace (a session may become known after the
    trace, from a late root span). Two incidents of one fingerprint are one problem: one collector
    keeps one incident per fingerprint, but collectors sharing a store each open their own when
    each sees it. Never across tenants, nor across classes: an infrastructure incident is a
    backend failing for every session, its session only the first it was seen in.

    >>> from dataclasses import replace
    >>> loop = replace(incident_for_test_page(0), session_id="s1", trace_id="t1", fingerprint="f1")
    >>> other = replace(loop, fingerprint="f2")  # another problem
    >>> correlated(loop, replace(other, trace_id="t9"))
    'same session s1'
    >>> correlated(loop, replace(other, session_id=""))  # the root span came later
    'same trace t1'
    >>> correlated(loop, replace(other, session_id="s2"))  # both know the session: it decides
    ''
    >>> correlated(loop, replace(loop, session_id="s2", incident_id="i2"))  # another collector's
    'same problem (fingerprint f1)'
    >>> correlated(loop, replace(loop, tenant="other"))
    ''
    >>> correlated(loop, replace(loop, incident_class="semantic"))
    ''
    """
    if a.tenant != b.tenant or a.incident_class != b.incident_class:
        return ""
    if a.fingerprint and a.fingerprint == b.fingerprint:
        return f"same problem (fingerprint {a.fingerprint[:12]})"
    if a.session_id and b.session_id:
        return f"same session {a.session_id}" if a.session_id == b.session_id else ""
    if a.trace_id and a.trace_id == b.trace_id:
        return f"same trace {a.trace_id}"
    return ""


def worst_severity(*incidents: IncidentRecord) -> str:
    """
    >>> from dataclasses import replace
    >>> sev3 = incident_for_test_page(0)
    >>> worst_severity(sev3, replace(sev3, severity="SEV1"), replace(sev3, severity="SEV2"))
    'SEV1'
    """
    return min((i.severity for i in incidents), key=lambda s: SEVERITY_RANK.get(s, 9))


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
