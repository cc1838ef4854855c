"""Paging's stages alone, without a store or a network: the retry stage's decisions, the outbox's
order, the repeat stage's intervals from routes and declared capabilities, the grouping stage's
folding of one run's incidents into one page."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from analyzer.paging.grouping import Grouping
from analyzer.paging.model import Changes, Firing, FiringTable, Notification
from analyzer.paging.notifiers import Delivery
from analyzer.paging.outbox import Outbox
from analyzer.paging.repeat import Repeat
from analyzer.paging.retry_stage import Outcome, RetryStage
from analyzer.paging.routing import Route
from analyzer.paging.silencer import Silencer
from collector.metrics import Metrics
from tests.analyzer.paging_timeline import SECOND, incident

CONFIG = SimpleNamespace(retry_initial_s=1, retry_max_s=8, give_up_after_s=60)


class Notifier:
    def __init__(self, actions=("trigger", "acknowledge", "resolve"), resend_s=None, answer=None):
        self.name = "pd"
        self.actions = frozenset(actions)
        self.resend_interval_s = resend_s
        self.answer = answer or Delivery(True)
        self.pages = []

    async def notify(self, page):
        self.pages.append(page)
        return self.answer


def notification(action="trigger", created_s=0.0, incident_id="inc-1", receiver="pd"):
    created_ns = int(created_s * SECOND)
    return Notification(
        Notification.new_id(), "default", receiver, action, incident(incident_id), created_ns,
        next_attempt_ns=created_ns,
    )  # fmt: skip


def retry_stage(**notifiers) -> RetryStage:
    return RetryStage(notifiers, CONFIG, Metrics(), rand=lambda: 1.0)


async def test_the_retry_stage_asks_only_for_what_a_notifier_declares():
    silent = Notifier(actions=("trigger", "resolve"))
    stage = retry_stage(pd=silent)
    assert await stage.attempt(notification("acknowledge")) == Outcome(
        "skipped", "acknowledge is not in this receiver's API"
    )
    assert silent.pages == []
    gone = await stage.attempt(notification(receiver="old"))
    assert gone == Outcome("failed", "receiver 'old' is no longer configured")
    n = notification()
    assert await stage.attempt(n) == Outcome("sent")
    [page] = silent.pages
    assert (page.key, page.incident.severity, page.test) == (n.notification_id, "SEV2", False)


async def test_the_retry_stage_turns_a_delivery_into_an_outcome():
    throttled = Delivery(False, retry=True, retry_after_s=5, error="HTTP 429: slow down")
    assert await retry_stage(pd=Notifier(answer=throttled)).attempt(notification()) == Outcome(
        "pending", "HTTP 429: slow down", 5
    )
    rejected = Delivery(False, error="HTTP 400: bad")
    assert await retry_stage(pd=Notifier(answer=rejected)).attempt(notification()) == Outcome(
        "failed", "HTTP 400: bad"
    )


def test_settling_backs_off_honours_retry_after_and_gives_up():
    stage, n = retry_stage(), notification()
    waits = []
    for t_s in (1, 2, 4, 8, 16):
        stage.settle(n, Outcome("pending", "HTTP 503"), t_s * SECOND)
        waits.append((n.next_attempt_ns - t_s * SECOND) / SECOND)
    assert waits == [1, 2, 4, 8, 8]  # doubling up to retry_max_s
    stage.settle(n, Outcome("pending", "HTTP 429", retry_after_s=30), 20 * SECOND)
    assert n.next_attempt_ns == 50 * SECOND  # the server's delay wins
    stage.settle(n, Outcome("pending", "HTTP 503"), 61 * SECOND)  # created at 0
    assert (n.status, n.last_error) == ("failed", "gave up after 7 attempts: HTTP 503")


def test_the_outbox_sends_one_notification_per_key_oldest_first():
    outbox = Outbox(store=None, receiver_types={}, metrics=Metrics())
    trigger, ack = notification("trigger", 1), notification("acknowledge", 2)
    other = notification("trigger", 3, incident_id="inc-2")
    outbox.restore([ack, other, trigger])
    assert outbox.due(10 * SECOND) == [trigger, other]
    trigger.next_attempt_ns = 20 * SECOND  # retrying: what comes after it waits
    assert outbox.due(10 * SECOND) == [other]
    assert outbox.next_due_ns() == 3 * SECOND
    trigger.in_flight = True
    assert outbox.due(30 * SECOND) == [other]


def test_the_repeat_interval_comes_from_the_route_and_the_notifier():
    route = Route("default", "pd", repeat_interval_s=600)
    firing = Firing("default", "pd", incident())

    def interval(notifier, acknowledged=False):
        firing.acknowledged = acknowledged
        outbox = Outbox(None, {}, Metrics())
        return Repeat({"default": route}, {"pd": notifier}, FiringTable(), outbox, None).interval_s(
            firing
        )

    assert interval(Notifier()) == 600
    assert interval(Notifier(), acknowledged=True) is None  # a person has it: no re-page
    assert interval(Notifier(resend_s=60)) == 60  # Alertmanager forgets what is not re-sent
    assert interval(Notifier(resend_s=60), acknowledged=True) == 60


def grouping() -> Grouping:
    root = Route("default", "pd", group_wait_s=0)
    outbox = Outbox(store=None, receiver_types={"pd": "pagerduty"}, metrics=Metrics())
    return Grouping(root, {"default": root}, FiringTable(), Silencer(store=None), outbox)


def decide(stage: Grouping, kind: str, record, t_s: float, note: str = "") -> Changes:
    changes = Changes()
    record = dataclasses.replace(record, status={"resolved": "resolved"}.get(kind, record.status))
    stage.on_event(kind, note, record, int(t_s * SECOND), changes)
    return changes


def sent(changes: Changes) -> list[tuple[str, str, str, str]]:
    """(action, status, incident, page severity) of each new outbox row."""
    return [(n.action, n.status, n.incident.incident_id, n.severity) for n in changes.new]


def test_grouping_folds_a_runs_incidents_into_its_first_page_and_pages_again_only_when_worse():
    stage = grouping()
    loop, ratio = incident("inc-1"), incident("inc-2", detector="token_ratio")
    spiral = incident("inc-3", detector="context_growth", severity="SEV1", trace_id="t7")
    assert sent(decide(stage, "opened", loop, 1)) == [("trigger", "pending", "inc-1", "SEV2")]
    stage.outbox.pending.clear()  # the trigger was sent
    joined = decide(stage, "opened", ratio, 2)
    assert sent(joined) == [("trigger", "folded", "inc-2", "SEV2")]  # kept, not sent
    assert joined.new[0].page_of == "inc-1"
    assert [(e.event, e.detail) for e in joined.events] == [
        ("page_folded", "folded into page of inc-1 (same session s1)")
    ]
    worse = decide(stage, "opened", spiral, 3)
    assert sent(worse)[1] == ("trigger", "pending", "inc-1", "SEV1")  # the first's dedup key
    assert [i.incident_id for i in worse.new[1].folded] == ["inc-2", "inc-3"]

    assert sent(decide(stage, "resolved", loop, 4)) == []  # its page goes on
    assert sent(decide(stage, "resolved", ratio, 5)) == [("resolve", "folded", "inc-2", "SEV2")]
    last = decide(stage, "resolved", spiral, 6)
    assert sent(last)[-1] == ("resolve", "pending", "inc-1", "SEV1")
    assert len(stage.firing) == 0


def test_the_repeat_stage_re_sends_a_page_never_its_folded_incidents():
    stage = grouping()
    decide(stage, "opened", incident("inc-1"), 0)
    decide(stage, "opened", incident("inc-2", detector="token_ratio"), 0)
    route = Route("default", "pd", repeat_interval_s=60)
    repeat = Repeat({"default": route}, {"pd": Notifier()}, stage.firing, stage.outbox, stage)
    stage.outbox.pending.clear()  # the first trigger was sent
    changes = Changes()
    repeat.due(61 * SECOND, changes)
    assert sent(changes) == [("trigger", "pending", "inc-1", "SEV2")]
    assert changes.new[0].reason == "repeat" and len(changes.new[0].folded) == 1
