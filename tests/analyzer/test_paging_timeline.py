"""Paging as timelines on a fake clock: incidents at virtual times, pages expected in windows.

The real pager, stages and SQL (chDB); only the clock and the notifiers' network are fake
(``tests/analyzer/paging_timeline.py``). The end-to-end tests (``tests/test_paging.py``) send to
local fake pagers and a real Alertmanager.
"""

from __future__ import annotations

import time

import pytest

from analyzer.paging.notifiers import Delivery
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate
from tests.analyzer.paging_timeline import (
    Timeline,
    acknowledged,
    answer,
    escalated,
    incident,
    opened,
    paging,
    resolved,
)

TABLES = ("page_outbox", "silences", "incident_events", "incidents")
INC = incident("inc-1")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("paging-timeline"))
    migrate(store)
    yield store
    store.close()


@pytest.fixture
def timeline(store):
    """``await timeline(config)``: a started timeline on an emptied store; t=0 is a round second
    of now (the outbox's rows have a 30-day TTL)."""
    for table in TABLES:
        store.command(f"TRUNCATE TABLE {table}")
    t0_ns = time.time_ns() // 10**9 * 10**9

    async def start(config: dict | None = None) -> Timeline:
        return await Timeline.start(store, config or paging(), t0_ns)

    return start


# --- group wait ---------------------------------------------------------------------------------


async def test_group_wait_delays_the_trigger_and_folds_an_escalation_into_it(timeline):
    tl = await timeline(paging(group_wait_s=30))
    sev3 = incident("inc-1", severity="SEV3")
    await tl.at(1, opened(sev3))
    await tl.at(10, escalated(sev3, "SEV2"))  # while the trigger waits
    await tl.until(40)
    tl.want(between=(31, 31), action="trigger", severity="SEV2")
    assert tl.actions() == [(31, "trigger")]  # one page, not one per event

    await tl.at(50, escalated(sev3, "SEV1"))  # after it was sent: the pager learns it again
    await tl.until(60)
    assert tl.actions() == [(31, "trigger"), (50, "trigger")]
    assert [r["status"] for r in tl.outbox()] == ["sent", "sent"]


async def test_an_incident_resolved_within_group_wait_is_never_paged(timeline):
    tl = await timeline(paging(group_wait_s=30))
    await tl.at(1, opened(INC))
    await tl.at(5, resolved(INC))
    await tl.until(120)
    assert tl.sent == []
    [row] = tl.outbox()
    assert (row["action"], row["status"]) == ("trigger", "superseded")
    assert row["last_error"] == "resolved before group_wait elapsed"


# --- repeat -------------------------------------------------------------------------------------


async def test_repeat_interval_re_pages_until_acknowledged_each_with_a_new_key(timeline):
    tl = await timeline(paging(repeat_interval_s=60))
    await tl.at(1, opened(INC))
    await tl.at(130, acknowledged(INC))
    await tl.until(400)
    assert tl.actions() == [(1, "trigger"), (61, "trigger"), (121, "trigger"), (130, "acknowledge")]
    assert len({s.key for s in tl.sent}) == 4  # a re-page is a new notification, a new key
    ack = tl.want(between=(130, 130), action="acknowledge")
    assert ack.note == "ann: on it"
    assert [r["reason"] for r in tl.outbox()] == ["", "repeat", "repeat", ""]
    # the timeline says paged once: re-pages are the pager's business
    assert tl.events(INC.incident_id) == [
        ("paged", "default/pd", "trigger"),
        ("page_acknowledged", "default/pd", "acknowledge"),
    ]


async def test_alertmanager_is_re_sent_while_firing_and_skips_acknowledge(timeline):
    receivers = [
        {"name": "am", "type": "alertmanager", "url": "http://am", "resend_interval_s": 20}
    ]
    tl = await timeline(paging(receivers, repeat_interval_s=3600))
    await tl.at(1, opened(INC))
    await tl.at(30, acknowledged(INC))  # no such action in Alertmanager's API
    await tl.at(65, resolved(INC))
    await tl.until(200)
    assert tl.actions() == [(1, "trigger"), (21, "trigger"), (41, "trigger"), (61, "trigger"),
                            (65, "resolve")]  # fmt: skip
    skipped = [r for r in tl.outbox() if r["status"] == "skipped"]
    assert [(r["action"], r["last_error"]) for r in skipped] == [
        ("acknowledge", "acknowledge is not in this receiver's API")
    ]


# --- silences -----------------------------------------------------------------------------------


async def test_a_silence_holds_the_page_until_it_ends_if_the_incident_still_fires(timeline):
    tl = await timeline(paging(group_wait_s=5))
    silence_id = await tl.silence("agent=support", "severity=~SEV[23]", start=0, end=100)
    other = incident("inc-2")
    await tl.at(1, opened(INC), opened(other))
    await tl.at(50, resolved(other))  # resolved while silenced: never paged
    await tl.until(99)
    assert tl.sent == []
    assert tl.events(INC.incident_id) == [
        ("page_silenced", "default/pd", f"silence {silence_id}")  # said once, not every tick
    ]
    await tl.until(200)
    tl.want(between=(105, 105.5), action="trigger", incident_id=INC.incident_id)  # + group_wait
    assert [s.incident_id for s in tl.sent] == [INC.incident_id]


async def test_an_escalation_to_a_label_the_silence_does_not_match_pages_at_once(timeline):
    tl = await timeline()
    await tl.silence("severity=SEV2", start=0, end=1000)
    await tl.at(1, opened(INC))
    await tl.at(10, escalated(INC, "SEV1"))
    await tl.until(20)
    assert tl.actions() == [(10, "trigger")]


# --- acknowledge and resolve ----------------------------------------------------------------------


async def test_resolve_after_trigger_sends_the_resolve_in_order(timeline):
    receivers = [
        {"name": "pd", "type": "pagerduty", "routing_key": "r" * 32},
        {"name": "slack", "type": "slack", "url": "https://hooks.slack.com/x"},
    ]
    routes = [
        {"match": {"severity": "SEV2"}, "receiver": "slack", "continue": True},
        {"match": {"agent": "support"}, "receiver": "pd"},
    ]
    tl = await timeline(paging(receivers, routes))
    await tl.at(1, opened(INC))
    await tl.at(5, resolved(INC, "agentwatch", "quiet for 10m"))
    await tl.until(30)
    assert tl.actions("slack") == tl.actions("pd") == [(1, "trigger"), (5, "resolve")]
    assert {s.note for s in tl.sent if s.action == "resolve"} == {"agentwatch: quiet for 10m"}
    assert sorted(tl.events(INC.incident_id)) == [
        ("page_resolved", "pd/pd", "resolve"),
        ("page_resolved", "slack/slack", "resolve"),
        ("paged", "pd/pd", "trigger"),
        ("paged", "slack/slack", "trigger"),
    ]
    assert tl.pager.firing.of_incident(INC.incident_id) == []


# --- retries ------------------------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_sends(timeline):
    tl = await timeline()
    tl.answer_next("pd", answer(429, retry_after_s=5))
    await tl.at(1, opened(INC))
    await tl.until(30)
    first, second = tl.sent
    assert (first.t, first.answer.retry) == (1, True)
    assert second.t == 6  # Retry-After 5 beats the 1 s backoff
    assert second.key == first.key  # the same notification: a receiver can drop a repeat
    [row] = tl.outbox()
    assert (row["status"], row["attempts"]) == ("sent", 2)
    metric = tl.pager.metrics.page_attempts.labels("pd", "trigger", "retry")
    assert metric._value.get() == 1


async def test_5xx_backs_off_exponentially_and_keeps_the_order_per_incident(timeline):
    tl = await timeline()
    tl.answer_next("pd", answer(503), answer(500), answer(502))
    await tl.at(1, opened(INC))
    await tl.at(1.5, acknowledged(INC))  # queued behind the trigger, never before it
    await tl.until(30)
    assert tl.actions() == [(1, "trigger"), (2, "trigger"), (4, "trigger"), (8, "trigger"),
                            (8, "acknowledge")]  # fmt: skip


async def test_a_4xx_is_permanent(timeline):
    tl = await timeline()
    tl.answer_next("pd", answer(400))
    await tl.at(1, opened(INC))
    await tl.until(60)
    assert tl.actions() == [(1, "trigger")]
    [row] = tl.outbox()
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "failed",
        1,
        "HTTP 400: scripted",
    )
    assert tl.events(INC.incident_id) == [
        ("page_failed", "default/pd", "trigger: HTTP 400: scripted")
    ]


async def test_a_notification_still_failing_after_give_up_after_s_fails(timeline):
    tl = await timeline(paging(give_up_after_s=10, retry_max_s=4))
    tl.answer_next("pd", *[answer(503)] * 20)
    await tl.at(1, opened(INC))
    await tl.until(100)
    assert [t for t, _ in tl.actions()] == [1, 2, 4, 8, 12]  # 4 s at most between tries
    [row] = tl.outbox()
    assert row["status"] == "failed"
    assert row["last_error"] == "gave up after 5 attempts: HTTP 503: scripted"


async def test_network_errors_are_retried(timeline):
    tl = await timeline()
    refused = Delivery(False, retry=True, error="ClientConnectorError: refused")
    tl.answer_next("pd", refused)
    await tl.at(1, opened(INC))
    await tl.until(10)
    assert tl.actions() == [(1, "trigger"), (2, "trigger")]


# --- restarts -----------------------------------------------------------------------------------


async def test_a_restart_resumes_pending_notifications_in_order_when_they_are_due(timeline):
    tl = await timeline()
    tl.answer_next("pd", answer(503), answer(503))  # down: tries at 1 and 2, next at 4
    await tl.at(1, opened(INC))
    await tl.at(2.5, acknowledged(INC))
    await tl.at(3, resolved(INC))
    assert [r["status"] for r in tl.outbox()] == ["pending"] * 3

    tl = await tl.restart()  # killed at t=3: everything the new pager knows is in the store
    await tl.until(30)
    lost_key = tl.sent[0].key
    assert tl.actions() == [(1, "trigger"), (2, "trigger"), (4, "trigger"), (4, "acknowledge"),
                            (4, "resolve")]  # fmt: skip
    assert tl.sent[2].key == lost_key  # the same idempotency key as before the restart
    assert [r["status"] for r in tl.outbox()] == ["sent"] * 3


async def test_a_restart_resolves_what_was_resolved_while_paging_was_down(timeline):
    tl = await timeline(paging(repeat_interval_s=60))
    await tl.at(1, opened(INC))
    tl.store_incident(resolved(INC).incidents[0])  # resolved while no pager listened
    await tl.until(10)
    tl = await tl.restart()
    await tl.until(200)  # and no re-page: it no longer fires
    assert tl.actions() == [(1, "trigger"), (10, "resolve")]
    assert tl.sent[1].note == "resolved while paging was down"


async def test_a_restart_keeps_repeating_a_firing_incident(timeline):
    tl = await timeline(paging(repeat_interval_s=60))
    await tl.at(1, opened(INC))
    tl.store_incident(INC)
    await tl.until(30)
    tl = await tl.restart()
    await tl.until(70)
    assert tl.actions() == [(1, "trigger"), (61, "trigger")]  # not paged again at the restart


async def test_open_incidents_no_route_has_paged_are_paged_at_start(timeline):
    tl = await timeline()
    tl.store_incident(INC)  # opened while paging was off
    tl = await tl.restart()
    await tl.until(1)
    assert tl.actions() == [(0, "trigger")]


# --- one problem, one page ----------------------------------------------------------------------

# Four findings on one run (session s1, trace t1): each its own incident, one page.
RATIO = incident("inc-2", detector="token_ratio", kind="ratio_spike", title="input/output 900:1")
COST = incident("inc-3", detector="cost_runaway", kind="session_cost", title="$12 in one session")
SPIRAL = incident(
    "inc-4", detector="context_growth", kind="spiral", severity="SEV1", title="context x8"
)


def folded_rows(tl) -> list[tuple[str, str, str]]:
    """(incident_id, action, page_of) of the outbox rows that page nothing: the SQL contract."""
    return [(r["incident_id"], r["action"], r["page_of"]) for r in tl.outbox() if r["status"] == "folded"]  # fmt: skip


async def test_findings_on_one_run_page_once_re_trigger_when_worse_and_resolve_with_the_last(
    timeline,
):
    tl = await timeline()
    await tl.at(1, opened(INC))
    await tl.at(2, opened(RATIO))
    await tl.at(3, opened(COST))  # SEV2 into a SEV2 page: nothing is sent
    await tl.at(10, opened(SPIRAL))  # SEV1: the page is triggered again, at SEV1
    await tl.at(20, resolved(INC), resolved(RATIO))  # the page's own incident: it goes on
    await tl.at(21, resolved(COST))
    await tl.until(30)
    assert tl.actions() == [(1, "trigger"), (10, "trigger")]
    await tl.at(40, resolved(SPIRAL))
    await tl.until(50)
    assert tl.actions() == [(1, "trigger"), (10, "trigger"), (40, "resolve")]
    assert {s.incident_id for s in tl.sent} == {INC.incident_id}  # one dedup key
    again = tl.want(between=(10, 10), action="trigger", severity="SEV1")
    assert again.folded == ("inc-2", "inc-3", "inc-4")  # the page lists every finding
    assert tl.events(COST.incident_id) == [
        ("page_folded", "default/pd", "folded into page of inc-1 (same session s1)")
    ]
    assert tl.events(INC.incident_id) == [
        ("paged", "default/pd", "trigger"),
        ("paged", "default/pd", "trigger"),
        ("page_resolved", "default/pd", "resolve"),
    ]
    assert sorted(folded_rows(tl)) == sorted(
        [(i, action, "inc-1") for i in ("inc-2", "inc-3", "inc-4") for action in ("trigger", "resolve")]
    )  # fmt: skip
    assert len(tl.pager.firing) == 0


async def test_two_runs_are_two_pages_and_a_late_session_matches_by_trace(timeline):
    tl = await timeline()
    no_session = incident("inc-1", session_id="", trace_id="t1")  # the root span came later
    late = incident("inc-2", detector="token_ratio", session_id="s1", trace_id="t1")
    same_session = incident("inc-3", detector="cost_runaway", session_id="s1", trace_id="t2")
    other_run = incident("inc-5", detector="cost_runaway", session_id="s2", trace_id="t5")
    await tl.at(1, opened(no_session), opened(late), opened(same_session), opened(other_run))
    await tl.until(5)
    assert sorted((s.incident_id, s.folded) for s in tl.sent) == [
        ("inc-1", ("inc-2", "inc-3")),
        ("inc-5", ()),
    ]
    assert [e[2] for e in tl.events("inc-2") + tl.events("inc-3")] == [
        "folded into page of inc-1 (same trace t1)",
        "folded into page of inc-1 (same session s1)",  # through inc-2, which knows both
    ]
    other_tenant = incident("inc-6", tenant="globex")
    backend = incident("inc-7", detector="infrastructure", incident_class="infrastructure")
    await tl.at(6, opened(other_tenant), opened(backend))  # a backend failing: not the run's
    await tl.until(7)
    tl.want(between=(6, 6), action="trigger", incident_id="inc-6")
    tl.want(between=(6, 6), action="trigger", incident_id="inc-7")


async def test_a_finding_joining_within_group_wait_rides_on_the_waiting_trigger(timeline):
    tl = await timeline(paging(group_wait_s=30))
    await tl.at(1, opened(INC))
    await tl.at(5, opened(SPIRAL))
    await tl.until(60)
    [page] = tl.sent
    assert (page.t, page.incident_id, page.severity, page.folded) == (
        31,
        "inc-1",
        "SEV1",
        ("inc-4",),
    )


async def test_acknowledging_any_finding_acknowledges_the_page_once(timeline):
    tl = await timeline(paging(repeat_interval_s=60))
    await tl.at(1, opened(INC), opened(RATIO))
    await tl.at(30, acknowledged(RATIO))
    await tl.at(40, acknowledged(INC))  # the page is acknowledged already
    await tl.until(200)  # and no re-page: someone has the run
    assert tl.actions() == [(1, "trigger"), (30, "acknowledge")]
    ack = tl.want(between=(30, 30), action="acknowledge", incident_id="inc-1")
    assert ack.note == "ann: on it (via inc-2)"


async def test_a_silence_of_the_first_finding_does_not_mute_a_worse_one(timeline):
    tl = await timeline()
    await tl.silence("severity=SEV2", start=0, end=1000)
    await tl.at(1, opened(INC), opened(RATIO))  # both muted
    await tl.at(10, opened(SPIRAL))  # not muted: the page goes out
    await tl.until(20)
    [page] = tl.sent
    assert (page.t, page.incident_id, page.severity, page.folded) == (10, "inc-1", "SEV1", ("inc-2", "inc-4"))  # fmt: skip


async def test_a_page_and_its_folded_findings_survive_a_restart(timeline):
    tl = await timeline(paging(repeat_interval_s=60))
    await tl.at(1, opened(INC), opened(RATIO))
    tl.store_incident(resolved(INC).incidents[0])  # the page's own, resolved while down
    tl.store_incident(RATIO)
    await tl.until(10)
    tl = await tl.restart()
    await tl.until(62)
    assert tl.actions() == [(1, "trigger"), (61, "trigger")]  # RATIO still fires: repeated
    assert tl.sent[-1].folded == ("inc-2",)
    await tl.at(70, resolved(RATIO))
    await tl.until(80)
    assert tl.actions()[-1] == (70, "resolve")
    assert tl.sent[-1].incident_id == "inc-1"


# --- test pages ---------------------------------------------------------------------------------


async def test_a_test_page_triggers_then_resolves_and_stays_off_the_timelines(timeline):
    tl = await timeline()
    trigger, resolve = await tl.pager.enqueue_test("default", note="from the CLI")
    await tl.until(1)
    assert [(s.action, s.test) for s in tl.sent] == [("trigger", True), ("resolve", True)]
    assert trigger.incident.incident_id.startswith("test-") and resolve.reason == "test"
    assert tl.events(trigger.incident.incident_id) == []
    assert tl.pager.firing.of_incident(trigger.incident.incident_id) == []
