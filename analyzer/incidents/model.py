"""What an incident is, for everyone downstream: typed records of the ``incidents`` and
``incident_events`` tables.

The lifecycle (``analyzer.incidents.lifecycle``) produces them; the store, the API, paging and
containment read them. A column is spelled here once: a schema change shows up as a type error
in the code that reads the field, not as a ``KeyError`` in a notifier at 3 a.m.

>>> record = IncidentRecord.from_row({"incident_id": "inc-1", "fingerprint": "fp", "version": 7,
...     "detector": "loop", "kind": "repeated_call", "class": "semantic", "severity": "SEV2",
...     "status": "open", "title": "t", "summary": "s", "tenant": "default", "service": "svc",
...     "agent": "support", "session_id": "s1", "user_id": "u1", "trace_id": "ab", "span_id": "cd",
...     "tool": "search", "evidence": '["a"]', "first_seen": "2026-12-07 10:00:00.000000001",
...     "last_seen": "2026-12-07 10:00:01.5", "occurrences": "3", "sessions_affected": 1,
...     "users_affected": 1, "link": ""})
>>> record.incident_class, record.occurrences, record.evidence, record.first_seen_ns % 10
('semantic', 3, ('a',), 1)
>>> IncidentRecord.from_row(record.row()) == record
True
>>> record.resolution, IncidentRecord.from_row({**record.row(), "resolution": "false_alarm"}).resolution
('', 'false_alarm')
>>> record.drill, IncidentRecord.from_row({**record.row(), "drill": True}).drill
(False, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import orjson

SEVERITIES = ("SEV1", "SEV2", "SEV3")
SEVERITY_RANK = {"SEV3": 3, "SEV2": 2, "SEV1": 1}  # lower is worse
STATUSES = ("open", "acknowledged", "resolved")
#: how a resolved incident was resolved (column ``resolution``; '' while it is not resolved, and on
#: rows written before the column existed): by a person who found it real (``fixed``) or a false
#: alarm (``false_alarm``: only a person says so), or by the quiet-period timer (``quiet``)
RESOLUTIONS = ("fixed", "false_alarm", "quiet")
BY_PEOPLE = ("fixed", "false_alarm")


def utc_text(ns: int) -> str:
    """Nanoseconds since the epoch as ClickHouse's DateTime64(9, 'UTC') text.

    >>> utc_text(1_763_000_000_123_456_789)
    '2025-11-13 02:13:20.123456789'
    """
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%S}.{nanos:09d}"


def utc_ns(text: str) -> int:
    """ClickHouse's DateTime64 text (UTC, any number of fraction digits) -> nanoseconds.

    >>> utc_ns(utc_text(1_763_000_000_123_456_789))
    1763000000123456789
    >>> utc_ns("2025-11-13 02:13:20"), utc_ns("2025-11-13 02:13:20.5") % 10**9
    (1763000000000000000, 500000000)
    """
    head, _, fraction = text.partition(".")
    seconds = int(datetime.strptime(head, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9] or 0)


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """One version of an incident: a row of ``incidents`` (the newest per ``incident_id`` is the
    incident now; ``incidents_current``). ``span_id``/``trace_id`` name the off-rails step."""

    incident_id: str
    fingerprint: str
    version: int
    detector: str
    kind: str
    incident_class: str  # column ``class``: infrastructure | semantic
    severity: str  # SEV1 | SEV2 | SEV3
    status: str  # open | acknowledged | resolved
    title: str
    summary: str
    tenant: str
    service: str
    agent: str
    session_id: str
    user_id: str
    trace_id: str
    span_id: str
    tool: str
    evidence: tuple[str, ...]
    first_seen_ns: int
    last_seen_ns: int
    occurrences: int
    sessions_affected: int
    users_affected: int
    link: str
    resolution: str = ""  # '' | fixed | false_alarm | quiet (``RESOLUTIONS``)
    # opened by a gameday drill's spans (``agentwatch gameday run``): titled [DRILL], paged with
    # the label drill=true, left out of the production views (schemas/021_drill.sql)
    drill: bool = False
    # the step a person named as where the run went off the rails (``set_off_rails_step``); ''
    # until then. ``span_id`` is the detector's flagged step.
    off_rails_span_id: str = ""

    def row(self) -> dict:
        """The ``incidents`` row (JSONEachRow for the store)."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["class"] = row.pop("incident_class")
        row["evidence"] = orjson.dumps(list(self.evidence)).decode()
        row["first_seen"] = utc_text(row.pop("first_seen_ns"))
        row["last_seen"] = utc_text(row.pop("last_seen_ns"))
        return row

    @classmethod
    def from_row(cls, row: Mapping) -> IncidentRecord:
        """From a row read back (JSONEachRow: 64-bit integers may come quoted)."""
        evidence = row.get("evidence") or "[]"
        return cls(
            incident_id=row["incident_id"],
            fingerprint=row["fingerprint"],
            version=int(row["version"]),
            detector=row["detector"],
            kind=row["kind"],
            incident_class=row["class"],
            severity=row["severity"],
            status=row["status"],
            title=row["title"],
            summary=row["summary"],
            tenant=row["tenant"],
            service=row["service"],
            agent=row["agent"],
            session_id=row["session_id"],
            user_id=row["user_id"],
            trace_id=row["trace_id"],
            span_id=row["span_id"],
            tool=row.get("tool", ""),
            evidence=tuple(orjson.loads(evidence) if isinstance(evidence, str) else evidence),
            first_seen_ns=_ns(row["first_seen"]),
            last_seen_ns=_ns(row["last_seen"]),
            occurrences=int(row["occurrences"]),
            sessions_affected=int(row["sessions_affected"]),
            users_affected=int(row["users_affected"]),
            link=row.get("link", ""),
            resolution=row.get("resolution", ""),  # '' on a row from before the column
            drill=bool(row.get("drill", False)),
            off_rails_span_id=row.get("off_rails_span_id", ""),
        )


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """A row of ``incident_events``: one thing that happened to an incident (``opened``,
    ``updated``, ``escalated``, ``acknowledged``, ``resolved``, ``contained``, ``paged`` …).
    ``session_id``/``user_id``/``trace_id`` are those of the finding behind it, if any."""

    incident_id: str
    fingerprint: str
    at_ns: int
    event: str
    actor: str  # agentwatch, policy, route/receiver, or a person
    detail: str
    session_id: str = ""
    user_id: str = ""
    trace_id: str = ""

    def row(self) -> dict:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["at"] = utc_text(row.pop("at_ns"))
        return row

    @classmethod
    def from_row(cls, row: Mapping) -> IncidentEvent:
        return cls(
            incident_id=row["incident_id"],
            fingerprint=row["fingerprint"],
            at_ns=_ns(row["at"]),
            event=row["event"],
            actor=row["actor"],
            detail=row["detail"],
            session_id=row.get("session_id", ""),
            user_id=row.get("user_id", ""),
            trace_id=row.get("trace_id", ""),
        )


def _ns(value) -> int:
    return int(value) if isinstance(value, int) else utc_ns(value)


@dataclass
class IncidentRows:
    """What one change produced: incident versions and their events, in order (the unit the store
    writes and every listener — paging, containment — receives)."""

    incidents: list[IncidentRecord] = field(default_factory=list)
    events: list[IncidentEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.incidents or self.events)
