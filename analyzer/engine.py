"""The analyzer as a pipeline consumer: steps -> detectors -> findings -> incidents -> store.

Two halves: ``Detection`` (sessions and detectors, pure) and ``Analyzer`` (incidents, their rows,
escalation, the listeners). The collector runs ``Detection`` in a process of its own by default
(``analyzer.worker``), handing it each batch's step columns; the analyzer and its incidents stay
in the collector, where the API, paging and containment reach them.

``IncidentDesk`` is the analyzer's incident half on its own: the ``IncidentManager``, writing
its rows and handing them to the listeners, and the status changes people make (the API). A
collector with detection off has a desk without an analyzer, so those changes take one path.
The SQL is in ``analyzer.incidents.repository``.

It sees every batch as it arrives (beside the span writer, not after a database poll), so an
incident row can be queryable within a second of the span that triggers it. Incident rows go to
the store in one small INSERT per batch that produced any.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from analyzer.detectors import REGISTRY, Detector
from analyzer.detectors.seeding import StoredSession
from analyzer.finding import Finding
from analyzer.incidents.lifecycle import IncidentManager
from analyzer.incidents.model import IncidentRecord, IncidentRows
from analyzer.policy import DEFAULT_POLICY, AgentPolicy
from analyzer.session import SessionTable
from analyzer.step import STEP_COLUMNS, Step, steps_from_columns
from analyzer.tool_calls import ToolCallSteps
from collector.consumer import SpanBatch
from collector.conventions import STEP_KINDS
from collector.store import StoreError, StoreUnavailable

# Rows -> the store (``IncidentRepository.write``).
WriteRows = Callable[[IncidentRows], Awaitable[None]]
# Called with every batch of incident rows once the store has them: paging and containment
# subscribe here (``Collector.publish_incident_rows``). One row per incident version, one event per
# change; a listener must not raise (errors are logged and swallowed).
RowsWritten = Callable[[IncidentRows], Awaitable[None]]
# (fingerprints, window_s) -> {fingerprint: (sessions, users)} seen in incident_events within the
# window, by every collector writing to the store (``IncidentRepository.spread``).
ReadSpread = Callable[[list[str], int], Awaitable[dict[str, tuple[int, int]]]]
# incident_id -> its newest version in the store, or None (``IncidentRepository.record``).
ReadRecord = Callable[[str], Awaitable[IncidentRecord | None]]
log = logging.getLogger("agentwatch.analyzer")


class Detection:
    """Sessions and detectors: steps in, findings out. No I/O and no clock of its own, so the same
    code runs inside the collector or in the detection process (``analyzer.worker``).

    **Event time.** Detectors judge by the spans' own timestamps, not by when they arrived: their
    clock (the ``now_ns`` they are given) is the tenant's *watermark*, the latest span end seen
    from that tenant, never more than ``MAX_AHEAD_NS`` past the collector's clock (a skewed or
    hostile exporter cannot push the windows into the future; the watermark is per tenant, so one
    tenant's clock cannot move another's). A replay, a backlog drained after an outage or a slow
    exporter thus gets the verdicts live traffic would. A late span (ending before the watermark)
    is judged at the watermark: windows count it in their oldest live bucket
    (``analyzer.detectors.infrastructure``). The session table's TTL stays on the collector's
    clock: it bounds memory, which is spent in real time.
    """

    #: how far a tenant's watermark may run ahead of the collector's clock
    MAX_AHEAD_NS = 60 * 1_000_000_000
    _MAX_TENANTS = 10_000

    def __init__(self, detectors: list[Detector], sessions: SessionTable) -> None:
        self.detectors = detectors
        # Most detectors look at one kind of step (tools, LLM calls): only ask those that care.
        self._by_kind: dict[str, list[Detector]] = {
            kind: [d for d in detectors if kind in getattr(d, "kinds", STEP_KINDS)]
            for kind in STEP_KINDS
        }
        self.sessions = sessions
        self.watermarks: dict[str, int] = {}  # tenant -> latest span end seen (event time)
        # tool calls asked for in LLM output become tool steps where no tool spans are sent
        self.tool_call_steps = ToolCallSteps()

    def observe(self, steps: list[Step], now: int, replay: bool = False) -> list[Finding]:
        """Feed steps through the detectors; ``replay`` (restart) keeps the state, drops findings.

        ``now``: the collector's clock (the session TTL, and the bound on the watermarks)."""
        steps = self.tool_call_steps(steps)
        findings = []
        by_kind, sessions, everyone = self._by_kind, self.sessions, self.detectors
        watermarks, ahead = self.watermarks, now + self.MAX_AHEAD_NS
        tenant, mark = None, 0
        for step in steps:
            if step.tenant != tenant:  # a batch is usually one tenant's: one lookup per batch
                if tenant is not None:
                    watermarks[tenant] = mark
                tenant = step.tenant
                mark = watermarks.get(tenant, 0)
            end = step.time_ns + step.duration_ns
            if end > mark:
                mark = end if end < ahead else max(mark, ahead)
            session = sessions.for_step(step, now)
            for detector in by_kind.get(step.kind, everyone):
                finding = detector.observe(step, session, mark)
                if finding is not None:
                    findings.append(finding)
        if tenant is not None:
            watermarks[tenant] = mark
            if len(watermarks) > self._MAX_TENANTS:  # tenants are few; a flood of names is not
                del watermarks[next(iter(watermarks))]
        return [] if replay else findings

    async def observe_columns(self, columns: dict, now: int, replay: bool = False) -> list[Finding]:
        """The interface the analyzer calls (``DetectionProcess`` has the same). A batch detection
        fails on is skipped with ``DetectionUnavailable``, as the detection process answers it:
        a detector bug must not fail the export whose spans are being stored."""
        try:
            return self.observe(steps_from_columns(columns), now, replay)
        except Exception as exc:
            log.exception("detection failed on a batch; its findings are lost")
            raise DetectionUnavailable(f"detection failed on it: {type(exc).__name__}") from exc

    def seed(self, sessions: list[StoredSession], now: int) -> None:
        """Stored sessions into the detectors that keep baselines (``analyzer.baselines``)."""
        for detector in self.detectors:
            if hasattr(detector, "seed"):
                detector.seed(sessions, now)

    async def seed_baselines(self, sessions: list[StoredSession], now: int) -> None:
        """The interface ``analyzer.baselines`` calls (``DetectionProcess`` has the same)."""
        self.seed(sessions, now)

    async def close(self) -> None:
        pass


class IncidentNotStored(Exception):
    """A status change the store refused (its message says what became of it)."""


class IncidentDesk:
    """Incidents' one writer: the ``IncidentManager``'s rows -> the store -> the listeners
    (paging, containment), and the status changes people make (``set_status``).

    ``write_rows`` stores rows, ``on_written`` hands them on once stored, ``read_record`` reads an
    incident's newest version (for one the manager does not hold).
    """

    def __init__(
        self,
        incidents: IncidentManager,
        write_rows: WriteRows,
        clock: Callable[[], int] = time.time_ns,
        on_written: RowsWritten | None = None,
        read_record: ReadRecord | None = None,
    ) -> None:
        self.incidents = incidents
        self.write_rows = write_rows
        self.clock = clock
        self.on_written = on_written
        self.read_record = read_record

    async def set_status(
        self, incident_id: str, status: str, actor: str, reason: str = "", resolution: str = ""
    ) -> IncidentRecord:
        """Acknowledge or resolve, for a person; the incident's new version once it is stored.
        A resolve's ``resolution`` is ``fixed`` (the default) or ``false_alarm``.

        Goes through ``IncidentManager.set_status`` whether the manager holds the incident or it
        is only in the store (read with ``read_record``), so the version, the event and the
        listeners are those of every other change. Raises the lifecycle's ``UnknownIncident`` and
        ``StatusConflict``, ``IncidentNotStored`` when the store refuses the write, and the
        store's errors when it cannot read the incident.
        """
        stored = None
        if self.incidents.held(incident_id) is None and self.read_record is not None:
            stored = await self.read_record(incident_id)
        change = self.incidents.set_status(
            incident_id, status, actor, self.clock(), reason, stored, resolution
        )
        if change.queued:
            if not await self.flush():
                raise IncidentNotStored(
                    f"incident {incident_id} is {status} in the collector, but the store refused"
                    " the write; it is retried with the next incident write"
                )
        else:
            try:
                await self.write_rows(change.rows)
            except (StoreError, StoreUnavailable) as exc:
                raise IncidentNotStored(f"cannot write the incident's new status: {exc}") from None
            await self._written(change.rows)
        return change.record

    async def flush(self) -> bool:
        """Write pending incident rows; on failure keep them for the next flush (never raise into
        ingest: the spans' own commit decides what their exporter is told). True when nothing is
        left pending (``set_status`` uses this to say whether the change is stored).
        """
        rows = self.incidents.take_rows()
        if not rows:
            return True
        try:
            await self.write_rows(rows)
        except Exception:
            log.exception(
                "writing %d incident rows failed; kept for the next attempt", len(rows.incidents)
            )
            self.incidents.put_back(rows)
            return False
        await self._written(rows)
        return True

    async def _written(self, rows: IncidentRows) -> None:
        if self.on_written is not None:
            await self.on_written(rows)

    async def close(self) -> None:
        await self.flush()


class Analyzer(IncidentDesk):
    """Findings -> incidents -> rows in the store -> listeners (paging, containment).

    ``detection`` is a ``Detection`` (in this process) or a ``DetectionProcess`` (the detectors in
    a process of their own, so that they use the second core instead of the ingest path's GIL).
    ``policy_for(service, agent)`` gives the escalation thresholds.
    """

    #: the only columns ``consume`` reads: the pipeline keeps just these while a commit is awaited
    columns = STEP_COLUMNS

    def __init__(
        self,
        detection: Detection,
        incidents: IncidentManager,
        write_rows: WriteRows,
        clock: Callable[[], int] = time.time_ns,
        on_written: RowsWritten | None = None,
        read_spread: ReadSpread | None = None,
        policy_for: Callable[[str, str], AgentPolicy] | None = None,
        flush_delay_s: float = 0.0,
        on_skipped: Callable[[int], object] | None = None,
        read_record: ReadRecord | None = None,
    ) -> None:
        super().__init__(incidents, write_rows, clock, on_written, read_record)
        self.detection = detection
        self.on_skipped = on_skipped  # (spans) when a batch could not be analysed (metrics)
        self.read_spread = read_spread
        self.policy_for = policy_for or (lambda service, agent: DEFAULT_POLICY)
        # Incident rows wait up to this long to share one INSERT (0: written by each batch).
        # Every INSERT is a new part in ClickHouse; a loop firing on every batch must not turn
        # into dozens of tiny parts a second competing with the span writer for the store.
        self.flush_delay_s = flush_delay_s
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task] = set()

    async def tick(self) -> None:
        """Resolve quiet incidents, escalate spreading ones, write what changed (periodically)."""
        now = self.clock()
        self.incidents.tick(now)
        if self.read_spread is not None:
            await self.escalate_spreading(now)
        await self.flush()

    async def escalate_spreading(self, now: int) -> None:
        """SEV1 for an open incident whose fingerprint has spread past its policy's escalation
        thresholds. Counted from ``incident_events`` in the store, so findings that other
        collectors saw count too; the counts also become the incident's blast radius."""
        by_window: dict[int, list] = {}
        for incident in self.incidents.open.values():
            step = incident.finding.step
            policy = self.policy_for(step.service, step.agent)
            if policy.escalation_sessions > 0 or policy.escalation_users > 0:
                window = int(policy.escalation_window_s)
                by_window.setdefault(window, []).append((incident, policy))
        for window, items in by_window.items():
            try:
                spread = await self.read_spread([i.fingerprint for i, _ in items], window)
            except Exception as exc:  # the store is down: try again at the next tick
                log.warning("escalation counts unavailable: %s", exc)
                return
            for incident, policy in items:
                sessions, users = spread.get(incident.fingerprint, (0, 0))
                if (sessions, users) == (incident.spread_sessions, incident.spread_users):
                    continue
                incident.spread_sessions, incident.spread_users = sessions, users
                limit_s, limit_u = policy.escalation_sessions, policy.escalation_users
                if (limit_s and sessions >= limit_s) or (limit_u and users >= limit_u):
                    self.incidents.escalate(
                        incident,
                        "SEV1",
                        now,
                        f"spreading: {sessions} sessions and {users} users within {window} s"
                        f" (policy {policy.rule}: SEV1 from {limit_s} sessions or {limit_u} users)",
                    )

    async def consume(self, batch: SpanBatch) -> None:
        now = self.clock()
        columns = {name: batch.columns[name] for name in STEP_COLUMNS}
        try:
            findings = await self.detection.observe_columns(columns, now)
        except DetectionUnavailable as exc:  # the spans are stored whatever detection does
            log.error("detection skipped a batch of %d spans: %s", len(batch), exc)
            if self.on_skipped is not None:
                self.on_skipped(len(batch))
            return
        for finding in findings:
            self.incidents.on_finding(finding, now)
        attributed = self.incidents.awaiting and self._attribute(batch.columns, now)
        if not findings and not attributed:
            return
        if self.flush_delay_s <= 0:
            await self.flush()  # quiet-period resolution is the periodic tick's job, not ingest's
        elif self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.flush_delay_s, self._flush_later)

    def _attribute(self, columns: dict, now: int) -> bool:
        """Session and user from this batch for incidents opened on a trace without them (the
        root span, which names them, is often exported last); True when an incident changed."""
        awaiting = self.incidents.awaiting
        sessions, users = columns["SessionId"], columns["UserId"]
        learned: dict[str, tuple[str, str]] = {}
        for i, trace in enumerate(columns["TraceId"]):
            if trace in awaiting and (sessions[i] or users[i]):
                session, user = learned.get(trace, ("", ""))
                learned[trace] = (session or sessions[i], user or users[i])
        changed = False
        for trace, (session, user) in learned.items():
            changed |= bool(self.incidents.attribute(trace, session, user, now))
        return changed

    def _flush_later(self) -> None:
        self._flush_timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        await asyncio.gather(*self._flushing)
        await super().close()
        await self.detection.close()


class DetectionUnavailable(Exception):
    """The detection process is down (it is restarted; the batch was not analysed)."""


def default_detectors() -> list[Detector]:
    """Every registered detector with its default thresholds (policy overrides them per agent)."""
    return [detector() for detector in REGISTRY.values()]
