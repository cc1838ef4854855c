"""Detectors judge by event time: a backlog drained at once gets the verdicts of live traffic."""

from __future__ import annotations

from analyzer.engine import Detection, default_detectors
from analyzer.session import SessionTable
from analyzer.step import Step
from tests.analyzer.timeline import SECOND

NOW = 1_900_000_000 * SECOND


def rate_limited_calls(gap_s: float, start_ns: int, tenant: str = "acme") -> list[Step]:
    """Six LLM calls from six sessions, all but the second answered 429, ``gap_s`` apart."""
    return [
        Step(
            start_ns + int(i * gap_s * SECOND), SECOND // 2, tenant, "svc", "support", f"s{i}",
            "u1", f"t{i}", f"sp{i}", "", "llm", model="gpt-4o",
            status="Ok" if i == 1 else "Error",
            error_type="" if i == 1 else "openai.RateLimitError",
            http_status=0 if i == 1 else 429,
        )
        for i in range(6)
    ]  # fmt: skip


def live(steps: list[Step]) -> list[str]:
    """Each span arrives a second after it ends, in a batch of its own."""
    detection = Detection(default_detectors(), SessionTable())
    found = []
    for step in steps:
        found += detection.observe([step], step.end_ns + SECOND)
    return [f.detector + "/" + f.kind for f in found]


def backlog(steps: list[Step], arrival_ns: int) -> list[str]:
    """The same spans drained in one batch, long after they happened (an outage's backlog)."""
    detection = Detection(default_detectors(), SessionTable())
    return [f.detector + "/" + f.kind for f in detection.observe(steps, arrival_ns)]


def test_a_burst_fires_live_and_from_a_backlog():
    steps = rate_limited_calls(5, NOW)
    assert live(steps) == ["infrastructure/rate_limit"]
    assert backlog(rate_limited_calls(5, NOW), NOW + 3600 * SECOND) == live(steps)


def test_failures_spread_over_minutes_fire_neither_live_nor_from_a_backlog():
    """Judged by arrival time, six failures spread over five minutes would all land in one
    60 s window when drained together, and page for a burst that never happened."""
    steps = rate_limited_calls(60, NOW)
    assert live(steps) == []
    assert backlog(rate_limited_calls(60, NOW), NOW + 3600 * SECOND) == []


def test_a_clock_ahead_cannot_move_the_watermark_past_the_collector_or_another_tenant():
    detection = Detection(default_detectors(), SessionTable())
    detection.observe(rate_limited_calls(1, NOW, tenant="good"), NOW + 10 * SECOND)
    detection.observe(rate_limited_calls(1, NOW + 86_400 * SECOND, tenant="skewed"), NOW)
    assert detection.watermarks["skewed"] == NOW + Detection.MAX_AHEAD_NS
    assert detection.watermarks["good"] < NOW + 10 * SECOND


def test_an_incident_from_a_backlog_is_not_resolved_as_quiet_on_arrival():
    """Its spans are hours old, but it was seen just now: the quiet period starts now."""
    from analyzer.finding import Finding
    from analyzer.incidents.lifecycle import IncidentManager

    manager = IncidentManager(quiet_period_s=1800)
    [old_step] = rate_limited_calls(1, NOW - 4 * 3600 * SECOND)[:1]
    manager.on_finding(
        Finding("infrastructure", "rate_limit", "infrastructure", "SEV2", "t", old_step, "x"), NOW
    )
    assert manager.tick(NOW + 60 * SECOND) == []
    assert [i.status for i in manager.tick(NOW + 1801 * SECOND)] == ["resolved"]
