"""The analyzer as a pipeline consumer: steps -> detectors -> findings -> incidents -> store.

It sees every batch as it arrives (beside the span writer, not after a database poll), so an
incident row can be queryable within a second of the span that triggers it. Incident rows go to
the store in one small INSERT per batch that produced any.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson

from analyzer.detectors import Detector
from analyzer.incidents import IncidentManager, IncidentRows
from analyzer.session import SessionTable
from analyzer.step import steps_from_batch
from collector.normalize import SpanBatch

WriteRows = Callable[[IncidentRows], Awaitable[None]]


class Analyzer:
    def __init__(
        self,
        detectors: list[Detector],
        sessions: SessionTable,
        incidents: IncidentManager,
        write_rows: WriteRows,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.detectors = detectors
        self.sessions = sessions
        self.incidents = incidents
        self.write_rows = write_rows
        self.clock = clock

    async def consume(self, batch: SpanBatch) -> None:
        now = self.clock()
        detectors, sessions, incidents = self.detectors, self.sessions, self.incidents
        for step in steps_from_batch(batch):
            session = sessions.for_step(step, now)
            for detector in detectors:
                finding = detector.observe(step, session, now)
                if finding is not None:
                    incidents.on_finding(finding, now)
        incidents.tick(now)
        rows = incidents.take_rows()
        if rows:
            await self.write_rows(rows)


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
