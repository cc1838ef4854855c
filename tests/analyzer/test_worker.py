"""The detection process's protocol: every batch gets its own reply, promptly, whatever went wrong
with another batch (hole 2 of issue 11: replies matched by order fell out of step after one error,
and every later export was answered only when the next one arrived)."""

from __future__ import annotations

import asyncio

import pytest

from analyzer.detectors.seeding import StoredSession
from analyzer.engine import DetectionUnavailable
from analyzer.step import _COLUMNS, STEP_COLUMNS, Step
from analyzer.worker import _BATCH, DetectionProcess, _frame
from collector.normalize import Normalizer
from tests.analyzer.test_engine import T0, loop_request

PROMPTLY_S = 20  # a reply takes milliseconds; this only bounds a hang


def columns(session: str, calls: int) -> dict:
    """The step columns of ``calls`` identical tool calls (a loop from the fourth on)."""
    trace = session.encode().ljust(16, b"\x01")[:16]
    batch, _ = Normalizer().normalize(loop_request(session, "u", calls, trace))
    return {name: batch.columns[name] for name in STEP_COLUMNS}


async def observe(detection: DetectionProcess, cols: dict) -> list:
    return await asyncio.wait_for(detection.observe_columns(cols, T0 + 10**10), PROMPTLY_S)


@pytest.fixture
async def detection():
    process = DetectionProcess()
    await process.start()
    yield process
    await process.close()


def sessions(findings: list) -> set[str]:
    return {finding.step.session for finding in findings}


async def test_a_batch_that_cannot_be_encoded_fails_alone(detection):
    """A count beyond 64 bits cannot be sent (orjson): that batch is skipped, the next one is
    answered with its own findings, at once."""
    bad = columns("s-bad", 1)
    bad["InputTokens"] = [2**64]
    with pytest.raises(DetectionUnavailable):
        await observe(detection, bad)
    assert sessions(await observe(detection, columns("s-next", 4))) == {"s-next"}
    assert sessions(await observe(detection, columns("s-after", 4))) == {"s-after"}
    assert detection.restarts == 0


async def test_a_batch_that_fails_in_the_child_fails_alone(detection):
    """Detection raising on a batch (here: a column missing) answers that batch with an error; the
    process and its state carry on."""
    bad = columns("s-bad", 1)
    del bad["ToolName"]
    with pytest.raises(DetectionUnavailable, match="KeyError"):
        await observe(detection, bad)
    assert sessions(await observe(detection, columns("s-next", 4))) == {"s-next"}
    assert detection.restarts == 0


async def test_concurrent_batches_each_get_their_own_findings(detection):
    batches = [columns(f"s{i}", 4 if i % 2 else 1) for i in range(8)]
    bad = columns("s-bad", 1)
    del bad["SessionId"]
    batches.insert(3, bad)
    results = await asyncio.gather(
        *(observe(detection, b) for b in batches), return_exceptions=True
    )
    assert isinstance(results.pop(3), DetectionUnavailable)
    assert [sessions(r) for r in results] == [{f"s{i}"} if i % 2 else set() for i in range(8)]


async def test_a_reply_to_no_pending_batch_resets_the_process(detection):
    """A reply the parent cannot place means the stream cannot be trusted: the pending batches
    fail at once (not hang), and the next batch starts a new process."""
    pid = detection._proc.pid
    pending = asyncio.ensure_future(observe(detection, columns("s-pending", 4)))
    detection._send(_frame(b"B", _BATCH.pack(10**9, T0, 0) + b"{}"))  # an id nobody waits for
    try:
        await pending
    except DetectionUnavailable:
        pass  # the stray reply came first: this batch was failed with the others
    else:
        # its reply came first; the stray one then resets the process
        await asyncio.wait_for(detection._reader, PROMPTLY_S)
    assert sessions(await observe(detection, columns("s-new", 4))) == {"s-new"}
    assert detection.restarts == 1 and detection._proc.pid != pid


async def test_a_child_that_dies_fails_its_pending_batches_and_is_replaced(detection):
    pid = detection._proc.pid
    pending = asyncio.ensure_future(observe(detection, columns("s-maybe", 4)))
    await asyncio.sleep(0)  # sent
    detection._proc.kill()
    try:
        await pending  # answered before the kill, or failed by it: never left waiting
    except DetectionUnavailable:
        pass
    await detection._proc.wait()
    assert sessions(await observe(detection, columns("s-new", 4))) == {"s-new"}
    assert detection.restarts == 1 and detection._proc.pid != pid


async def test_in_the_collectors_process_a_failing_batch_is_skipped_alike():
    """With ``detect_process: false`` a detector bug fails that batch's detection, not the export."""
    from analyzer.detectors.loop import LoopDetector
    from analyzer.engine import Detection
    from analyzer.session import SessionTable

    class Broken(LoopDetector):
        def observe(self, step, session, now):
            if step.session == "s-bad":
                raise RuntimeError("a detector bug")
            return super().observe(step, session, now)

    detection = Detection([Broken()], SessionTable())
    with pytest.raises(DetectionUnavailable, match="RuntimeError"):
        await detection.observe_columns(columns("s-bad", 1), T0)
    assert sessions(await detection.observe_columns(columns("s-next", 4), T0)) == {"s-next"}


async def test_a_replayed_batch_detection_fails_on_does_not_stop_start_up():
    """analyzer/restore.py replays recent steps at start-up: a batch answered with an error (as
    the child now answers) is logged and skipped, not raised into the collector's start."""
    from types import SimpleNamespace

    from analyzer.engine import Detection
    from analyzer.restore import restore
    from analyzer.session import SessionTable
    from collector.store import query_rows

    class Failing(Detection):
        async def observe_columns(self, columns, now, replay=False):
            raise DetectionUnavailable("detection failed on it: KeyError")

    cols = columns("s-replayed", 4)
    steps = [[*row, "2025-11-13 00:00:00.000"] for row in zip(*cols.values(), strict=True)]

    async def run_store(fn, store, *args):
        if fn is query_rows:  # the open incidents, then the recent steps
            return steps if "StepKind IN" in args[0] else []
        return []  # the baselines' seed query: no stored sessions

    analyzer = SimpleNamespace(detection=Failing([], SessionTable()), incidents=None)
    assert await restore(analyzer, None, run_store) == (0, 4)


def llm_columns(session: str, ratio: float, **key: str) -> dict:
    """Three LLM steps of ``session`` at ``ratio``:1, 36,000 input tokens in all (under the token
    ratio's 200,000 cold-start bar: only a warm baseline can flag it); ``key``: ``tenant``,
    ``service``, ``agent`` (default acme, svc, support)."""
    tenant, service = key.get("tenant", "acme"), key.get("service", "svc")
    agent = key.get("agent", "support")
    out = max(round(12_000 / ratio), 1)
    steps = [
        Step(T0 + k, 1, tenant, service, agent, session, "u", f"t-{session}", f"{session}{k}",
             "", "llm", model="gpt-4o", input_tokens=12_000, output_tokens=out, status="Ok")
        for k in range(3)
    ]  # fmt: skip
    return {name: [getattr(s, field) for s in steps] for name, field in _COLUMNS.items()}


SEEDED = [
    StoredSession("acme", f"old{i}", "svc", "support", "svc", "support", "gpt-4o",
                  200 * (55 + i % 10), 200, 3, 0.01, T0 - 10**12 + i)
    for i in range(25)
]  # fmt: skip


async def test_a_seeded_child_judges_warm_and_so_does_its_replacement(detection):
    """The seed frame is kept and sent again to a restarted child: its baselines start warm."""
    await detection.seed_baselines(SEEDED, T0)
    assert await observe(detection, llm_columns("normal", 80.0)) == []
    [finding] = await observe(detection, llm_columns("reader", 4000.0))
    assert finding.evidence[0]["rule"] == "baseline"
    detection._proc.kill()
    await detection._proc.wait()
    [finding] = await observe(detection, llm_columns("reader-2", 4000.0))
    assert detection.restarts == 1
    assert finding.evidence[0]["rule"] == "baseline" and finding.evidence[0]["warm"]


async def test_an_unseeded_child_stays_cold(detection):
    """The same session without a seed: not flagged (the cold-start bar is 200,000 tokens)."""
    assert await observe(detection, llm_columns("reader", 4000.0)) == []


async def test_a_seed_the_child_cannot_use_is_logged_and_detection_carries_on(detection):
    await detection.seed_baselines([StoredSession(*("x",) * 12)], T0)  # a ratio of strings
    assert sessions(await observe(detection, columns("s-next", 4))) == {"s-next"}
    assert detection.restarts == 0
