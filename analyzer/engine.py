"""The analyzer as a pipeline consumer: steps -> detectors -> findings -> incidents -> store.

It sees every batch as it arrives (beside the span writer, not after a database poll), so an
incident row can be queryable within a second of the span that triggers it. Incident rows go to
the store in one small INSERT per batch that produced any.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import orjson

from analyzer.detectors import Detector
from analyzer.incidents import IncidentManager, IncidentRows
from analyzer.session import SessionTable
from analyzer.step import steps_from_batch
from collector.conventions import STEP_KINDS
from collector.normalize import SpanBatch

WriteRows = Callable[[IncidentRows], Awaitable[None]]
# Called with every batch of incident rows once the store has them: paging and containment
# subscribe here (``Collector.publish_incident_rows``). One row per incident version, one event per
# change; a listener must not raise (errors are logged and swallowed).
RowsWritten = Callable[[IncidentRows], Awaitable[None]]
log = logging.getLogger("agentwatch.analyzer")


class Analyzer:
    def __init__(
        self,
        detectors: list[Detector],
        sessions: SessionTable,
        incidents: IncidentManager,
        write_rows: WriteRows,
        clock: Callable[[], int] = time.time_ns,
        on_written: RowsWritten | None = None,
    ) -> None:
        self.detectors = detectors
        # Most detectors look at one kind of step (tools, LLM calls): only ask those that care.
        self._by_kind: dict[str, list[Detector]] = {
            kind: [d for d in detectors if kind in getattr(d, "kinds", STEP_KINDS)]
            for kind in STEP_KINDS
        }
        self.sessions = sessions
        self.incidents = incidents
        self.write_rows = write_rows
        self.clock = clock
        self.on_written = on_written

    def detectors_for(self, kind: str) -> list[Detector]:
        return self._by_kind.get(kind, self.detectors)

    async def tick(self) -> None:
        """Resolve quiet incidents and write what changed (called periodically)."""
        self.incidents.tick(self.clock())
        await self.flush()

    async def flush(self) -> bool:
        """Write pending incident rows; on failure keep them for the next flush (never raise into
        ingest: the spans' own commit decides what their exporter is told). True when nothing is
        left pending (the API's acknowledge/resolve use this to say whether the change is stored).
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
        if self.on_written is not None:
            await self.on_written(rows)
        return True

    async def consume(self, batch: SpanBatch) -> None:
        now = self.clock()
        by_kind, sessions, incidents = self._by_kind, self.sessions, self.incidents
        for step in steps_from_batch(batch):
            session = sessions.for_step(step, now)
            for detector in by_kind.get(step.kind, self.detectors):
                finding = detector.observe(step, session, now)
                if finding is not None:
                    incidents.on_finding(finding, now)
        await self.flush()  # quiet-period resolution is the periodic tick's job, not ingest's


def default_detectors() -> list[Detector]:
    """Every detector with its default thresholds (policy overrides them per agent)."""
    from analyzer.detectors.context_growth import ContextGrowthDetector
    from analyzer.detectors.cost_runaway import CostRunawayDetector
    from analyzer.detectors.infrastructure import InfrastructureDetector
    from analyzer.detectors.loop import LoopDetector
    from analyzer.detectors.out_of_scope_tool import OutOfScopeToolDetector
    from analyzer.detectors.token_ratio import TokenRatioDetector

    return [
        LoopDetector(),
        ContextGrowthDetector(),
        TokenRatioDetector(),
        OutOfScopeToolDetector(),
        CostRunawayDetector(),
        InfrastructureDetector(),
    ]


def store_writer(store, run_store) -> WriteRows:
    """Rows -> ``incidents`` and ``incident_events`` (JSONEachRow) on the store's thread."""

    async def write(rows: IncidentRows) -> None:
        if rows.incidents:
            block = b"\n".join(orjson.dumps(r) for r in rows.incidents)
            await run_store(store.insert_blocks, "incidents", "JSONEachRow", [block])
        if rows.events:
            block = b"\n".join(orjson.dumps(r) for r in rows.events)
            await run_store(store.insert_blocks, "incident_events", "JSONEachRow", [block])

    return write
