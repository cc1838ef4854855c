"""Restart safety: rebuild the analyzer's memory from ClickHouse before taking new spans.

1. Open (and acknowledged) incidents are adopted, so a repeat after a restart updates the incident
   already open instead of opening a second one.
2. The baselines (token ratio, spend) are seeded from the recent sessions in the store
   (``analyzer.baselines``, days of them, not just the look-back), so an agent warm before the
   restart is judged against its baseline at once.
3. Recent steps (by arrival, ``IngestedAt``, within ``lookback_s``, at most ``max_steps`` of the
   newest) are replayed through the detectors with their findings discarded: a half-seen loop is
   remembered, and a loop already reported is not reported again.

What is not rebuilt: the infrastructure detector's windows are refilled at the current time (a
burst just before the restart counts as now); a session running across the restart is judged on
the steps of the look-back only (its own running totals are not seeded).
"""

from __future__ import annotations

import logging
import time

from analyzer.baselines import seed_baselines
from analyzer.engine import DetectionUnavailable
from analyzer.incidents.repository import IncidentRepository
from analyzer.step import STEP_COLUMNS
from collector.store import Store, query_rows

log = logging.getLogger("agentwatch.analyzer")

# The step columns (``analyzer.step.STEP_COLUMNS``, in order) as the store holds them: the one
# read of steps back from ``agent_spans`` (this replay, and ``analyzer.session_sweep``'s).
STEP_SELECT = """
    toUnixTimestamp64Nano(Timestamp) AS t, Duration, Tenant, ServiceName, AgentName,
    SessionId, UserId, TraceId, SpanId, ParentSpanId, StepKind, Model, ToolName, ToolArgs,
    ToolArgsHash, ToolResultHash, InputTokens, OutputTokens, CostUsd, StatusCode, ErrorType, HttpStatus,
    FinishReason,
    -- ErrorText is not stored: a failed span's status and exception messages stand in
    if(StatusCode = 'Error', substringUTF8(arrayStringConcat(arrayFilter(x -> x != '',
        arrayConcat([StatusMessage], arrayMap((n, a) -> if(n = 'exception',
            concat(a['exception.type'], ': ', a['exception.message']), ''),
            `Events.Name`, `Events.Attributes`))), '\n'), 1, 512), '') AS ErrorText,
    OutputToolCalls, Drill"""

_RECENT_STEPS = f"""
SELECT * FROM (
    SELECT {STEP_SELECT},
           IngestedAt
    FROM agent_spans
    WHERE IngestedAt > now64(3) - toIntervalSecond({{lookback:UInt32}})
      AND StepKind IN ('llm', 'tool', 'embedding', 'retrieval')
    ORDER BY IngestedAt DESC
    LIMIT {{max_steps:UInt32}}
) ORDER BY IngestedAt, t
"""


async def restore(
    analyzer, store: Store, run_store, lookback_s: int = 1800, max_steps: int = 200_000
) -> tuple[int, int]:
    """Before serving: adopt open incidents, replay recent steps. Returns (incidents, steps).

    ``run_store(fn, *args)`` runs the queries on the store's thread; the replay goes through
    ``analyzer.detection`` (in this process or the detection process) in batches.
    """
    records = await IncidentRepository(store, run_store).unresolved()
    for record in records:
        analyzer.incidents.adopt(record)
    await seed_baselines(analyzer.detection, store, run_store)  # never fails start-up
    params = {"lookback": str(lookback_s), "max_steps": str(max_steps)}
    steps = await run_store(query_rows, store, _RECENT_STEPS, params, "JSONCompactEachRow")
    now = time.time_ns()
    for start in range(0, len(steps), _REPLAY_BATCH):
        chunk = [values[:-1] for values in steps[start : start + _REPLAY_BATCH]]
        columns = dict(zip(STEP_COLUMNS, (list(c) for c in zip(*chunk, strict=True)), strict=True))
        # findings dropped: they were reported before the restart
        try:
            await analyzer.detection.observe_columns(columns, now, replay=True)
        except DetectionUnavailable as exc:  # those steps are not remembered; start-up goes on
            log.error("restore: detection skipped %d replayed steps: %s", len(chunk), exc)
    if records or steps:
        log.info("restored %d open incidents and %d recent steps", len(records), len(steps))
    return len(records), len(steps)


_REPLAY_BATCH = 5000
