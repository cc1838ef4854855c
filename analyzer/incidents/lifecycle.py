"""Incidents: findings grouped by fingerprint, with a lifecycle, written to ClickHouse.

A finding's fingerprint hashes its stable labels (tenant, service, agent, detector, kind,
signature), so repeats update one open incident (occurrences, sessions and users affected, last
seen) instead of opening new ones. An incident is open until acknowledged or resolved; one that
stays quiet for ``quiet_period_s`` resolves itself. A finding whose fingerprint's last incident
was resolved opens a new incident (a recurrence: same fingerprint, new id).

Every change appends a version to ``incidents`` and an event to ``incident_events``; the manager
only produces rows, the caller writes them (``IncidentRows``), so this module does no I/O. It is
the one place an incident changes: findings (opened, updated, escalated), spreading (escalated),
people (acknowledged, resolved: ``set_status``, also for an incident only in the store) and the
quiet-period timer (resolved); versions are counted here and nowhere else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from analyzer.finding import Finding
from analyzer.incidents.model import (
    RESOLUTIONS,
    SEVERITY_RANK,
    IncidentEvent,
    IncidentRecord,
    IncidentRows,
)
from analyzer.step import Step

#: what a drill's incident title starts with, so every page and list shows it for what it is
DRILL_PREFIX = "[DRILL] "
_MAX_TRACKED = 10_000  # sessions/users remembered per incident for the affected counts
_MAX_PENDING_ROWS = 10_000  # incident rows kept while the store refuses them


class UnknownIncident(LookupError):
    """No such incident: neither held by the manager nor given from the store."""


class StatusConflict(Exception):
    """The incident is resolved already, or already has the status asked for."""


@dataclass(frozen=True, slots=True)
class StatusChange:
    """What ``IncidentManager.set_status`` did: the incident's new version and its event.

    ``queued``: the manager holds the incident, so the rows also wait in ``take_rows`` with every
    other change (the caller flushes). Otherwise (an incident only in the store) they are the
    caller's to write, and nothing changed if that fails (the store still has the old version).
    """

    record: IncidentRecord
    event: IncidentEvent
    queued: bool

    @property
    def rows(self) -> IncidentRows:
        return IncidentRows([self.record], [self.event])


def next_version(version: int, now_ns: int) -> int:
    """The version a change writes. Versions grow with the clock, so a restarted collector's (or
    another collector's) later change wins in ``ReplacingMergeTree(version)``.

    >>> next_version(5, 100), next_version(100, 100)
    (100, 101)
    """
    return max(version + 1, now_ns)


def fingerprint_of(finding: Finding) -> str:
    """Stable labels only: the same problem in the same agent gets the same fingerprint.

    >>> from analyzer.step import Step
    >>> step = Step(1, 1, "acme", "svc", "support", "s1", "u1", "t1", "sp1", "", "tool", tool="search")
    >>> f = Finding("loop", "repeated_call", "semantic", "SEV2", "x", step, "search")
    >>> fingerprint_of(f) == fingerprint_of(Finding("loop", "repeated_call", "semantic", "SEV2", "y",
    ...     Step(9, 1, "acme", "svc", "support", "s2", "u2", "t2", "sp9", "", "tool"), "search"))
    True
    >>> drill = Step(9, 1, "acme", "svc", "support", "s2", "u2", "t2", "sp9", "", "tool", drill=True)
    >>> fingerprint_of(f) == fingerprint_of(Finding("loop", "repeated_call", "semantic", "SEV2", "y",
    ...     drill, "search"))
    False
    """
    s = finding.step
    labels = "\x1f".join(
        (s.tenant, s.service, s.agent, finding.detector, finding.kind, finding.signature)
    )
    if s.drill:  # a drill never updates (nor resolves) a real incident, nor a real one a drill
        labels += "\x1fdrill"
    return hashlib.sha256(labels.encode()).hexdigest()[:16]


@dataclass
class Incident:
    incident_id: str
    fingerprint: str
    finding: Finding  # the first finding: its step is the flagged (off-rails) step
    severity: str
    status: str = "open"
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    occurrences: int = 1
    sessions: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    version: int = 0
    # Counts carried over from the table when a restarted collector adopts an open incident
    # (the session and user sets themselves are not stored).
    earlier_sessions: int = 0
    earlier_users: int = 0
    # How far the fingerprint has spread, counted in ClickHouse across every collector
    # (``Analyzer.escalate_spreading``); the blast radius is the larger of this and our own count.
    spread_sessions: int = 0
    spread_users: int = 0
    # The collector's clock at the latest finding: the quiet period runs on the later of this and
    # ``last_seen_ns`` (event time), so a backlog's old spans do not resolve it on arrival.
    touched_ns: int = 0
    resolution: str = ""  # how it was resolved (``RESOLUTIONS``), once it is
    off_rails_span_id: str = ""  # the step a person named (``IncidentManager.set_off_rails_step``)

    def record(self, link_template: str) -> IncidentRecord:
        """This version of the incident, as the store and every listener see it."""
        f, s = self.finding, self.finding.step
        sessions = max(self.earlier_sessions + len(self.sessions), self.spread_sessions)
        users = max(self.earlier_users + len(self.users), self.spread_users)
        return IncidentRecord(
            incident_id=self.incident_id,
            fingerprint=self.fingerprint,
            version=self.version,
            detector=f.detector,
            kind=f.kind,
            incident_class=f.incident_class,
            severity=self.severity,
            status=self.status,
            title=DRILL_PREFIX + f.title if s.drill else f.title,
            summary=_summary(self, sessions, users),
            tenant=s.tenant,
            service=s.service,
            agent=s.agent,
            session_id=s.session,
            user_id=s.user,
            trace_id=s.trace_id,
            span_id=s.span_id,
            tool=s.tool,
            evidence=tuple(f.evidence),
            first_seen_ns=self.first_seen_ns,
            last_seen_ns=self.last_seen_ns,
            occurrences=self.occurrences,
            sessions_affected=sessions,
            users_affected=users,
            link=link_template.format(
                incident_id=self.incident_id,
                trace_id=s.trace_id,
                span_id=s.span_id,
                session_id=s.session,
            ),
            resolution=self.resolution,
            drill=s.drill,
            off_rails_span_id=self.off_rails_span_id,
        )


def _summary(incident: Incident, sessions: int, users: int) -> str:
    f = incident.finding
    return (
        f"{f.incident_class} {incident.severity} {f.detector}/{f.kind} in {f.step.agent or f.step.service}: "
        f"{incident.occurrences} occurrence(s), {sessions} session(s), {users} user(s)"
    )


class IncidentManager:
    def __init__(self, link_template: str = "", quiet_period_s: float = 1800.0) -> None:
        self.link_template = link_template
        self.quiet_ns = int(quiet_period_s * 1e9)
        self.open: dict[str, Incident] = {}  # fingerprint -> the incident not yet resolved
        self.rows = IncidentRows()
        # trace id -> incidents opened on it with no session or no user yet (``attribute``)
        self.awaiting: dict[str, list[Incident]] = {}

    def on_finding(self, finding: Finding, now_ns: int) -> Incident:
        fp = fingerprint_of(finding)
        step = finding.step
        incident = self.open.get(fp)
        if incident is None:
            incident = Incident(
                incident_id=f"inc-{hashlib.sha256(f'{fp}:{now_ns}'.encode()).hexdigest()[:12]}",
                fingerprint=fp,
                finding=finding,
                severity=finding.severity,
                first_seen_ns=step.time_ns,
                last_seen_ns=step.time_ns,
            )
            self.open[fp] = incident
            event = "opened"
            if not (step.session and step.user) and step.trace_id:
                self._await(step.trace_id, incident)
        else:
            incident.occurrences += 1
            incident.last_seen_ns = max(incident.last_seen_ns, step.time_ns)
            event = "updated"
            if SEVERITY_RANK[finding.severity] < SEVERITY_RANK[incident.severity]:
                incident.severity = finding.severity
                event = "escalated"
        incident.touched_ns = now_ns
        for values, key in ((incident.sessions, step.session), (incident.users, step.user)):
            if key and len(values) < _MAX_TRACKED:
                values.add(key)
        self._record(incident, event, now_ns, "agentwatch", finding.title, step)
        return incident

    def _await(self, trace_id: str, incident: Incident) -> None:
        waiting = self.awaiting.setdefault(trace_id, [])
        if incident not in waiting:
            waiting.append(incident)
        if len(self.awaiting) > _MAX_TRACKED:  # oldest first: a trace's root comes within minutes
            del self.awaiting[next(iter(self.awaiting))]

    def attribute(self, trace_id: str, session: str, user: str, now_ns: int) -> list[Incident]:
        """A later span of ``trace_id`` names its session and/or user: incidents opened on the
        trace without them get them (``session_id``, ``user_id``, the affected counts), with an
        ``attributed`` event, which containment reads to apply a policy action that waited for
        the session. Returns the incidents changed."""
        changed = []
        still = []
        for incident in self.awaiting.pop(trace_id, ()):
            step = incident.finding.step
            learned = []
            if session and not step.session:
                step.session = session
                learned.append(f"session {session}")
            if user and not step.user:
                step.user = user
                learned.append(f"user {user}")
            if not learned:
                if not (step.session and step.user):
                    still.append(incident)
                continue
            for values, key in ((incident.sessions, step.session), (incident.users, step.user)):
                if key and len(values) < _MAX_TRACKED:
                    values.add(key)
            if incident.status != "resolved":
                detail = f"{' and '.join(learned)} learned from a later span of trace {trace_id}"
                self._record(incident, "attributed", now_ns, "agentwatch", detail, step)
                changed.append(incident)
            if not (step.session and step.user):
                still.append(incident)
        if still:
            self.awaiting[trace_id] = still
        return changed

    def adopt(self, record: IncidentRecord) -> Incident:
        """Take over an open incident from the table (after a restart), so repeats update it.

        The flagged step is rebuilt from the record's columns.
        """
        step = Step(
            record.first_seen_ns, 0, record.tenant, record.service, record.agent,
            record.session_id, record.user_id, record.trace_id, record.span_id, "", "other",
            tool=record.tool, drill=record.drill,
        )  # fmt: skip
        finding = Finding(
            record.detector,
            record.kind,
            record.incident_class,
            record.severity,
            record.title.removeprefix(DRILL_PREFIX) if record.drill else record.title,
            step,
            "",
            record.evidence,
        )
        incident = Incident(
            incident_id=record.incident_id,
            fingerprint=record.fingerprint,
            finding=finding,
            severity=record.severity,
            status=record.status,
            first_seen_ns=record.first_seen_ns,
            last_seen_ns=record.last_seen_ns,
            occurrences=record.occurrences,
            version=record.version,
            earlier_sessions=record.sessions_affected,
            earlier_users=record.users_affected,
            off_rails_span_id=record.off_rails_span_id,
        )
        self.open[incident.fingerprint] = incident
        return incident

    def held(self, incident_id: str) -> Incident | None:
        """The incident, if this manager holds it (open or acknowledged, opened or adopted here)."""
        return next((i for i in self.open.values() if i.incident_id == incident_id), None)

    def set_status(
        self,
        incident_id: str,
        status: str,
        actor: str,
        now_ns: int,
        reason: str = "",
        stored: IncidentRecord | None = None,
        resolution: str = "",
    ) -> StatusChange:
        """Acknowledge or resolve (by a person, or by the quiet-period timer).

        A resolve records its ``resolution`` (``RESOLUTIONS``): ``fixed`` unless given (a person
        saying it was real), ``false_alarm`` (a person saying it should not have fired: the
        ``resolved`` event's detail starts with "false alarm"), ``quiet`` (the timer). Only a
        resolve has one; a ``ValueError`` otherwise.

        An incident this manager does not hold (opened before a restart that did not adopt it,
        by another collector, or while detection was off) changes from ``stored``, its newest
        version read from the store: every other column is kept as it is, and the manager does
        not take it over (the timer does not resolve it; a new finding with its fingerprint opens
        a new incident). Raises ``UnknownIncident`` when neither has it and ``StatusConflict``
        when it is resolved already or already ``status``.
        """
        if status == "resolved":
            resolution = resolution or "fixed"
            if resolution not in RESOLUTIONS:
                raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
            if resolution == "false_alarm":
                reason = f"false alarm: {reason}" if reason else "false alarm"
        elif resolution:
            raise ValueError(f"only a resolve has a resolution, not {status!r}")
        incident = self.held(incident_id)
        current = incident.status if incident is not None else stored.status if stored else None
        if current is None:
            raise UnknownIncident(incident_id)
        if current == "resolved" or current == status:
            raise StatusConflict(f"incident {incident_id} is already {current}")
        if incident is None:
            version = next_version(stored.version, now_ns)
            record = replace(stored, status=status, version=version, resolution=resolution)
            return StatusChange(record, _event(record, status, now_ns, actor, reason), False)
        incident.status, incident.resolution = status, resolution
        if status == "resolved":
            del self.open[incident.fingerprint]
        self._record(incident, status, now_ns, actor, reason)
        return StatusChange(self.rows.incidents[-1], self.rows.events[-1], True)

    def set_off_rails_step(
        self,
        incident_id: str,
        span_id: str,
        actor: str,
        now_ns: int,
        stored: IncidentRecord | None = None,
    ) -> StatusChange:
        """A person names the step where the run went off the rails (``off_rails_span_id``, and
        a ``step_named`` event): the detector's flagged step is where it was noticed, not always
        where it began. Allowed at any status (a review names it after the resolve). As in
        ``set_status``, an incident the manager does not hold changes from ``stored``; raises
        ``UnknownIncident`` when neither has it."""
        incident = self.held(incident_id)
        if incident is None:
            if stored is None:
                raise UnknownIncident(incident_id)
            record = replace(
                stored, version=next_version(stored.version, now_ns), off_rails_span_id=span_id
            )
            event = _event(record, "step_named", now_ns, actor, f"off-rails step {span_id}")
            return StatusChange(record, event, False)
        incident.off_rails_span_id = span_id
        self._record(incident, "step_named", now_ns, actor, f"off-rails step {span_id}")
        return StatusChange(self.rows.incidents[-1], self.rows.events[-1], True)

    def escalate(self, incident: Incident, severity: str, now_ns: int, detail: str) -> bool:
        """Raise an open incident's severity (never lowers it); True when it changed."""
        if SEVERITY_RANK[severity] >= SEVERITY_RANK[incident.severity]:
            return False
        incident.severity = severity
        self._record(incident, "escalated", now_ns, "agentwatch", detail)
        return True

    def tick(self, now_ns: int) -> list[Incident]:
        """Resolve incidents quiet for longer than the quiet period."""
        cutoff = now_ns - self.quiet_ns
        quiet = [i for i in self.open.values() if max(i.last_seen_ns, i.touched_ns) < cutoff]
        for incident in quiet:
            self.set_status(
                incident.incident_id, "resolved", "agentwatch", now_ns, "quiet period elapsed",
                resolution="quiet",
            )  # fmt: skip
        return quiet

    def take_rows(self) -> IncidentRows:
        """Pending rows: every event, and each incident's newest version only (the table keeps
        the newest anyway; a looping agent can produce hundreds of versions between writes)."""
        rows, self.rows = self.rows, IncidentRows()
        newest = {record.incident_id: record for record in rows.incidents}
        if len(newest) < len(rows.incidents):
            rows.incidents = list(newest.values())
        return rows

    def put_back(self, rows: IncidentRows) -> None:
        """Rows that could not be written go first in the next batch (bounded: oldest dropped)."""
        self.rows.incidents[:0] = rows.incidents
        self.rows.events[:0] = rows.events
        del self.rows.incidents[:-_MAX_PENDING_ROWS]
        del self.rows.events[:-_MAX_PENDING_ROWS]

    def _record(
        self,
        incident: Incident,
        event: str,
        now_ns: int,
        actor: str,
        detail: str,
        step: Step | None = None,
    ) -> None:
        """Append the incident's new version and the event; ``step`` is the finding's step (its
        session and trace go on the event, so repeats from other sessions are visible)."""
        incident.version = next_version(incident.version, now_ns)
        record = incident.record(self.link_template)
        self.rows.incidents.append(record)
        self.rows.events.append(_event(record, event, now_ns, actor, detail, step))


def _event(
    record: IncidentRecord,
    event: str,
    now_ns: int,
    actor: str,
    detail: str,
    step: Step | None = None,
) -> IncidentEvent:
    return IncidentEvent(
        incident_id=record.incident_id,
        fingerprint=record.fingerprint,
        at_ns=now_ns,
        event=event,
        actor=actor,
        detail=detail,
        session_id=step.session if step else "",
        user_id=step.user if step else "",
        trace_id=step.trace_id if step else "",
    )
