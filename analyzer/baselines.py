"""Baselines from ClickHouse: recent sessions that seed the detectors, at start and every 5 min.

Token ratio and spend are judged against each agent's own baseline, learned from sessions. Held
only in the detection process, a baseline would be lost on a restart (the replay covers
``restore``'s look-back, 30 minutes) and a second collector on the same store would learn its own.
The spans are in ClickHouse already, so there is nothing new to write: one aggregate query over
``agent_spans`` sums each recent session as the detectors do (``StoredSession``) and the
detectors take the result through ``seed`` (``Detection.seed_baselines``, which the detection
process also answers, and re-sends to a restarted child). Run at start-up, before the replay,
and every 5 minutes after (``agentwatch.app``), so collectors sharing a store converge.

Bounded: sessions whose spans started within ``lookback_s`` (the spans table is partitioned by
day and ordered by trace, so that is a scan of the look-back's partitions), at most ``per_key``
of the most recently active sessions per agent, model and finished-or-not (the newest 64 for the
token ratio window and the newest 200 finished ones for spend are among them), and at most
``max_rows`` in all. ``python -m bench.baselines`` measures it: ~0.5 s at 1M spans and 20k
sessions on chDB (bench/README.md), at start-up and every 5 minutes; a table of
per-session summaries would be the next step if a store outgrew that.

What it cannot reproduce is left out rather than guessed: sessions without a session id whose
spans name a user (the session table groups those into a user's *runs* by time gaps), and the
policy's per-agent ``min_llm_steps`` (the seed applies the detector's default).
"""

from __future__ import annotations

import logging
import time
from functools import partial

from analyzer.detectors.seeding import StoredSession
from collector.store import Store, query_rows

log = logging.getLogger("agentwatch.analyzer")

# The session key, model and agent as the detectors derive them from steps (analyzer.session,
# token_ratio, cost_runaway): a step without a session id belongs to its trace's session, which
# agent_spans resolves through session_traces, or to ``trace:<id>``.
RECENT_SESSIONS = """
SELECT Tenant, Session, Service, Agent, LlmService, if(LlmAgent != '', LlmAgent, Agent),
       LlmModel, Input, Output, LlmSteps, Cost, toUnixTimestamp64Nano(LastSeen)
FROM (
    WITH StepKind = 'llm' AND InputTokens > 0 AS judged
    SELECT Tenant,
           if(SessionId != '', SessionId, concat('trace:', TraceId)) AS Session,
           argMin(ServiceName, Timestamp) AS Service,
           argMinIf(AgentName, Timestamp, AgentName != '') AS Agent,
           argMinIf(ServiceName, Timestamp, judged) AS LlmService,
           argMinIf(AgentName, Timestamp, judged) AS LlmAgent,
           argMinIf(Model, Timestamp, judged) AS LlmModel,
           sumIf(InputTokens, judged) AS Input,
           sumIf(OutputTokens, judged) AS Output,
           countIf(judged) AS LlmSteps,
           sumIf(CostUsd, StepKind = 'llm') AS Cost,
           maxIf(Timestamp, StepKind = 'llm') AS LastSeen
    FROM agent_spans
    WHERE Timestamp > now64(9) - toIntervalSecond({lookback_s:UInt32})
      AND NOT Drill  -- a gameday drill's sessions are no agent's usual
    GROUP BY Tenant, Session
    HAVING countIf(StepKind = 'llm') > 0
       AND NOT (startsWith(Session, 'trace:') AND max(UserId) != '')  -- a user's run: not here
)
ORDER BY LastSeen DESC
LIMIT {per_key:UInt32} BY Tenant, Service, Agent, LlmService, LlmAgent, LlmModel,
                          LastSeen < now64(9) - toIntervalSecond({idle_s:UInt32})
LIMIT {max_rows:UInt32}
"""


def recent_sessions(
    store: Store,
    lookback_s: int = 7 * 86400,
    per_key: int = 200,
    idle_s: int = 1800,
    max_rows: int = 100_000,
) -> list[StoredSession]:
    """The recent sessions with LLM steps, oldest activity first; blocking (the store's thread)."""
    params = {
        "lookback_s": str(lookback_s),
        "per_key": str(per_key),
        "idle_s": str(idle_s),
        "max_rows": str(max_rows),
    }
    rows = query_rows(store, RECENT_SESSIONS, params, "JSONCompactEachRow")
    return [StoredSession(*row) for row in reversed(rows)]


async def seed_baselines(detection, store: Store, run_store, **limits) -> int:
    """Seed ``detection``'s baselines from the store; the sessions read (0 when it failed: the
    baselines carry on as they are, which is never worse than not seeding)."""
    try:
        sessions = await run_store(partial(recent_sessions, **limits), store)
        await detection.seed_baselines(sessions, time.time_ns())
    except Exception as exc:  # the store or the detection process is down: try again later
        log.warning("baselines not seeded from the store: %s", exc)
        return 0
    return len(sessions)
