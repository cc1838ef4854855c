"""Paging's stages alone, without a store or a network: the retry stage's decisions, the outbox's
order, the repeat stage's intervals from routes and declared capabilities."""

from __future__ import annotations

from types import SimpleNamespace

from analyzer.paging.model import Firing, FiringTable, Notification
from analyzer.paging.notifiers import Delivery
from analyzer.paging.outbox import Outbox
from analyzer.paging.repeat import Repeat
from analyzer.paging.retry_stage import Outcome, RetryStage
from analyzer.paging.routing import Route
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
