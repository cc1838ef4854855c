"""The incident lifecycle without a store or a server: ``IncidentManager`` (every change: findings,
spreading, people, the quiet-period timer), ``IncidentDesk`` (writing a change and handing it on)
and containment reading the typed records it produces."""

from __future__ import annotations

from dataclasses import replace

import pytest

from analyzer.containment.actions import Containment
from analyzer.engine import IncidentDesk, IncidentNotStored
from analyzer.finding import Finding
from analyzer.incidents.lifecycle import (
    IncidentManager,
    StatusConflict,
    UnknownIncident,
    next_version,
)
from analyzer.incidents.model import IncidentEvent, IncidentRecord, IncidentRows
from analyzer.policy import parse_policy
from analyzer.step import Step
from collector.store import StoreUnavailable

T0 = 1_763_000_000_000_000_000
S = 1_000_000_000


def finding(session: str, user: str, severity: str = "SEV2", at: int = T0) -> Finding:
    step = Step(at, 1, "acme", "svc", "support", session, user, "ab" * 16, "cd" * 8, "", "tool",
                tool="search")  # fmt: skip
    return Finding("loop", "repeated_call", "semantic", severity, "search looped", step, "search",
                   ({"span_id": "cd" * 8},))  # fmt: skip


def events(rows: IncidentRows) -> list[tuple[str, str, str]]:
    return [(e.event, e.actor, e.detail) for e in rows.events]


def stored_record(status: str = "open", version: int = T0) -> IncidentRecord:
    """An incident only in the store (another collector's, or from before a restart)."""
    return IncidentRecord(
        incident_id="inc-elsewhere01", fingerprint="f00d", version=version, detector="loop",
        kind="repeated_call", incident_class="semantic", severity="SEV1", status=status,
        title="looped elsewhere", summary="as the other collector wrote it", tenant="acme",
        service="svc", agent="support", session_id="s-9", user_id="u-9", trace_id="ef" * 16,
        span_id="12" * 8, tool="search", evidence=({"span_id": "12" * 8},), first_seen_ns=T0,
        last_seen_ns=T0 + S, occurrences=7, sessions_affected=3, users_affected=2,
        link="http://elsewhere/trace",
    )  # fmt: skip


def test_open_update_escalate_acknowledge_resolve():
    manager = IncidentManager(link_template="http://t/{trace_id}/{span_id}", quiet_period_s=60)
    incident = manager.on_finding(finding("s1", "u1"), T0 + 1)
    assert manager.on_finding(finding("s2", "u2"), T0 + 2) is incident  # same fingerprint
    manager.on_finding(finding("s3", "u2", severity="SEV1"), T0 + 3)  # a worse finding
    assert manager.escalate(incident, "SEV1", T0 + 4, "spreading") is False  # never twice
    assert manager.escalate(incident, "SEV3", T0 + 4, "x") is False  # never lower
    rows = manager.take_rows()
    assert events(rows) == [
        ("opened", "agentwatch", "search looped"),
        ("updated", "agentwatch", "search looped"),
        ("escalated", "agentwatch", "search looped"),
    ]
    assert [e.session_id for e in rows.events] == ["s1", "s2", "s3"]
    [record] = rows.incidents  # the newest version only
    assert (record.severity, record.status, record.occurrences) == ("SEV1", "open", 3)
    assert (record.sessions_affected, record.users_affected) == (3, 2)
    assert record.link == f"http://t/{'ab' * 16}/{'cd' * 8}"
    assert record.version == T0 + 3  # versions follow the clock

    ack = manager.set_status(record.incident_id, "acknowledged", "alice", T0 + 10, "looking")
    assert ack.queued and ack.record.status == "acknowledged" and ack.record.version == T0 + 10
    assert (ack.event.event, ack.event.actor, ack.event.detail) == (
        "acknowledged",
        "alice",
        "looking",
    )
    assert manager.held(record.incident_id) is incident
    with pytest.raises(StatusConflict, match="already acknowledged"):
        manager.set_status(record.incident_id, "acknowledged", "bob", T0 + 11)

    resolved = manager.set_status(record.incident_id, "resolved", "alice", T0 + 12, "fixed")
    assert resolved.record.status == "resolved" and manager.held(record.incident_id) is None
    rows = manager.take_rows()
    assert events(rows) == [("acknowledged", "alice", "looking"), ("resolved", "alice", "fixed")]
    assert [r.status for r in rows.incidents] == ["resolved"]
    # not held any more: unknown to the manager unless the store says more
    with pytest.raises(UnknownIncident):
        manager.set_status(record.incident_id, "resolved", "alice", T0 + 13)
    with pytest.raises(StatusConflict, match="already resolved"):
        manager.set_status(record.incident_id, "acknowledged", "bob", T0 + 13, "",
                           resolved.record)  # fmt: skip

    # the same problem again: a recurrence (same fingerprint, new incident)
    again = manager.on_finding(finding("s4", "u4"), T0 + 20)
    assert again.fingerprint == incident.fingerprint and again.incident_id != incident.incident_id


def test_escalation_by_spread_is_a_change_like_any_other():
    manager = IncidentManager()
    incident = manager.on_finding(finding("s1", "u1"), T0)
    incident.spread_sessions = 12
    assert manager.escalate(incident, "SEV1", T0 + 5, "spreading: 12 sessions") is True
    rows = manager.take_rows()
    assert events(rows)[-1] == ("escalated", "agentwatch", "spreading: 12 sessions")
    assert rows.incidents[-1].severity == "SEV1" and rows.incidents[-1].sessions_affected == 12


def test_quiet_incidents_resolve_themselves():
    manager = IncidentManager(quiet_period_s=60)
    quiet = manager.on_finding(finding("s1", "u1", at=T0), T0)
    busy = manager.on_finding(replace(finding("s2", "u2", at=T0 + 50 * S), signature="other"), T0)
    manager.set_status(quiet.incident_id, "acknowledged", "alice", T0 + S)  # acked: still quiet
    manager.take_rows()
    assert manager.tick(T0 + 61 * S) == [quiet]
    rows = manager.take_rows()
    assert events(rows) == [("resolved", "agentwatch", "quiet period elapsed")]
    assert rows.incidents[0].status == "resolved"
    assert [i.incident_id for i in manager.open.values()] == [busy.incident_id]
    assert manager.tick(T0 + 111 * S) == [busy]


def test_an_incident_only_in_the_store_changes_from_its_record():
    manager = IncidentManager(link_template="http://here/{trace_id}")
    stored = stored_record()
    change = manager.set_status(stored.incident_id, "acknowledged", "carol", T0 + 5 * S, "mine",
                                stored)  # fmt: skip
    assert not change.queued and not manager.take_rows()  # the caller writes it
    assert change.record == replace(stored, status="acknowledged", version=T0 + 5 * S)
    assert change.event == IncidentEvent(
        stored.incident_id, "f00d", T0 + 5 * S, "acknowledged", "carol", "mine"
    )
    assert manager.open == {}  # not taken over
    assert change.rows.incidents == [change.record] and change.rows.events == [change.event]

    # a version from a clock behind the store's still wins
    ahead = stored_record(version=T0 + 10**12)
    later = manager.set_status(ahead.incident_id, "resolved", "carol", T0, "", ahead).record
    assert later.version == T0 + 10**12 + 1 == next_version(ahead.version, T0)
    for status in ("acknowledged", "resolved"):
        with pytest.raises(StatusConflict, match="already resolved"):
            manager.set_status(ahead.incident_id, status, "x", T0, "", later)
    with pytest.raises(StatusConflict, match="already acknowledged"):
        manager.set_status(stored.incident_id, "acknowledged", "x", T0, "", change.record)


def test_an_adopted_incident_is_updated_by_repeats():
    manager = IncidentManager()
    record = replace(
        stored_record(), fingerprint=manager.on_finding(finding("s", "u"), T0).fingerprint
    )
    manager = IncidentManager()  # a restarted collector
    incident = manager.adopt(record)
    assert manager.on_finding(finding("s-new", "u-new"), T0 + S) is incident
    [updated] = manager.take_rows().incidents
    assert (updated.incident_id, updated.occurrences, updated.sessions_affected) == (
        record.incident_id,
        8,
        4,
    )
    assert updated.version > record.version and updated.span_id == record.span_id


class Written:
    """The store's side of a desk: what it wrote, or refuses while ``down``."""

    def __init__(self, stored: dict[str, IncidentRecord] | None = None) -> None:
        self.rows: list[IncidentRows] = []
        self.published: list[IncidentRows] = []
        self.stored = stored or {}
        self.down = False

    async def write(self, rows: IncidentRows) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")
        self.rows.append(rows)

    async def publish(self, rows: IncidentRows) -> None:
        self.published.append(rows)

    async def record(self, incident_id: str) -> IncidentRecord | None:
        return self.stored.get(incident_id)

    def desk(self, manager: IncidentManager) -> IncidentDesk:
        return IncidentDesk(manager, self.write, lambda: T0 + 100 * S, self.publish, self.record)


async def test_the_desk_writes_held_and_stored_changes_alike_and_publishes_them():
    store = Written({"inc-elsewhere01": stored_record()})
    manager = IncidentManager()
    desk = store.desk(manager)
    held = manager.on_finding(finding("s1", "u1"), T0)

    acked = await desk.set_status(held.incident_id, "acknowledged", "alice", "on it")
    assert acked.status == "acknowledged"
    # the pending finding and the acknowledgement went out in one write, then to the listeners
    assert [events(r) for r in store.rows] == [
        [("opened", "agentwatch", "search looped"), ("acknowledged", "alice", "on it")]
    ]
    assert store.published == store.rows

    elsewhere = await desk.set_status("inc-elsewhere01", "resolved", "bob")
    assert (elsewhere.status, elsewhere.version) == ("resolved", T0 + 100 * S)
    assert events(store.rows[-1]) == [("resolved", "bob", "")] and store.published == store.rows

    with pytest.raises(UnknownIncident):
        await desk.set_status("inc-nowhere", "resolved", "bob")
    with pytest.raises(StatusConflict):
        await desk.set_status(held.incident_id, "acknowledged", "bob")
    assert len(store.rows) == 2


async def test_a_refused_write_says_what_became_of_the_change():
    store = Written({"inc-elsewhere01": stored_record()})
    manager = IncidentManager()
    desk = store.desk(manager)
    held = manager.on_finding(finding("s1", "u1"), T0)
    store.down = True

    # held: the collector has it and keeps the rows for the next write
    with pytest.raises(IncidentNotStored, match="acknowledged in the collector"):
        await desk.set_status(held.incident_id, "acknowledged", "alice")
    assert manager.held(held.incident_id).status == "acknowledged"
    # only in the store: nothing changed, nothing kept (a retry must not write it twice)
    with pytest.raises(IncidentNotStored, match="cannot write the incident's new status"):
        await desk.set_status("inc-elsewhere01", "acknowledged", "alice")
    store.down = False
    assert await desk.flush()
    [rows] = store.rows
    assert events(rows) == [
        ("opened", "agentwatch", "search looped"),
        ("acknowledged", "alice", ""),
    ]
    assert store.published == [rows]


class Board:
    """The control board's side of containment: what it was asked to set."""

    def __init__(self) -> None:
        self.calls = []

    def clock(self) -> int:
        return T0

    async def set(self, scope, mode, **kw):
        self.calls.append((scope, mode, kw["incident_id"]))
        return object(), None


async def test_containment_reads_the_typed_records():
    policy = parse_policy({"defaults": {"actions": {"loop": "pause_session"},
                                        "tool_circuit": {"sessions": 2}}})  # fmt: skip
    board, notes = Board(), []

    async def write_events(events: list[IncidentEvent]) -> None:
        notes.extend(events)

    containment = Containment(board, policy.for_agent, write_events)
    manager = IncidentManager()
    incident = manager.on_finding(finding("s1", "u1"), T0)
    manager.on_finding(finding("s2", "u2"), T0 + 1)
    manager.set_status(incident.incident_id, "acknowledged", "alice", T0 + 2)  # a person: ignored
    await containment(manager.take_rows())

    (paused, mode, iid), (circuit, circuit_mode, _) = board.calls
    assert (paused.tenant, paused.session, mode, iid) == (
        "acme",
        "s1",
        "paused",
        incident.incident_id,
    )
    assert (circuit.tenant, circuit.agent, circuit.tool, circuit_mode) == (
        "acme",
        "support",
        "search",
        "circuit_open",
    )
    assert [(n.event, n.actor, n.incident_id) for n in notes] == [
        ("contained", "policy", incident.incident_id)
    ] * 2
    assert notes[0].detail.startswith("paused tenant=acme;session=s1: policy")


def test_a_resolve_records_how_it_was_resolved():
    """A person's resolve is ``fixed`` unless they say ``false_alarm``; the timer's is ``quiet``;
    only a resolve has a resolution."""
    manager = IncidentManager(quiet_period_s=60)
    real = manager.on_finding(finding("s1", "u1"), T0)
    noise = manager.on_finding(replace(finding("s2", "u2"), signature="noise"), T0)
    idle = manager.on_finding(replace(finding("s3", "u3"), signature="idle"), T0)
    manager.take_rows()
    with pytest.raises(ValueError, match="only a resolve"):
        manager.set_status(real.incident_id, "acknowledged", "alice", T0 + 1, "", None,
                           "false_alarm")  # fmt: skip
    with pytest.raises(ValueError, match="resolution must be one of"):
        manager.set_status(real.incident_id, "resolved", "alice", T0 + 1, "", None, "wontfix")
    assert manager.held(real.incident_id) is real  # nothing changed

    fixed = manager.set_status(real.incident_id, "resolved", "alice", T0 + 2, "tool fixed")
    false_alarm = manager.set_status(noise.incident_id, "resolved", "bob", T0 + 3,
                                     "a retry by design", resolution="false_alarm")  # fmt: skip
    assert manager.tick(T0 + 120 * S) == [idle]
    rows = manager.take_rows()
    assert [(r.incident_id, r.resolution) for r in rows.incidents] == [
        (real.incident_id, "fixed"),
        (noise.incident_id, "false_alarm"),
        (idle.incident_id, "quiet"),
    ]
    assert events(rows) == [
        ("resolved", "alice", "tool fixed"),
        ("resolved", "bob", "false alarm: a retry by design"),
        ("resolved", "agentwatch", "quiet period elapsed"),
    ]
    assert (fixed.record.resolution, false_alarm.event.detail) == (
        "fixed", "false alarm: a retry by design",
    )  # fmt: skip
    # an incident only in the store: its record carries the resolution too
    stored = manager.set_status("inc-elsewhere01", "resolved", "carol", T0 + 5, "",
                                stored_record(), "false_alarm")  # fmt: skip
    assert (stored.record.resolution, stored.event.detail) == ("false_alarm", "false alarm")
    assert IncidentRecord.from_row(stored.record.row()) == stored.record
