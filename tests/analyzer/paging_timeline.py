"""A timeline for paging tests, in the shape of Alertmanager's acceptance tests: things happen at
virtual times, notifications are expected in windows of virtual time.

The pager is the real one (every stage, the real SQL on a real chDB store); only the clock is fake
and the notifiers record instead of sending (each wraps the real vendor notifier: its capabilities
and its request are the real ones, its answers are scripted). ``until(t)`` runs the dispatcher as
the collector does, waking at each time it asks for (``Pager.next_wake_ns``), so no test sleeps::

    tl = await Timeline.start(store, paging(group_wait_s=30))
    await tl.at(1, opened(INC))
    await tl.until(60)
    tl.want(between=(31, 31.5), action="trigger")
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

import orjson

from agentwatch.config import PagingConfig
from analyzer.incidents.model import IncidentEvent, IncidentRecord, IncidentRows, utc_text
from analyzer.paging.notifiers import Delivery, Page
from analyzer.paging.notifiers.http import HttpNotifiers
from analyzer.paging.pager import Pager
from analyzer.paging.store import PagingSql
from collector.retry import http_retryable
from collector.store import insert_rows, query_rows

SECOND = 1_000_000_000


class FakeClock:
    """Nanoseconds since the epoch, moved only by the test; ``t`` is seconds since ``t0_ns``."""

    def __init__(self, t0_ns: int) -> None:
        self.t0_ns = t0_ns
        self.now_ns = t0_ns

    def __call__(self) -> int:
        return self.now_ns

    def at(self, t: float) -> int:
        return self.t0_ns + round(t * SECOND)

    @property
    def t(self) -> float:
        return (self.now_ns - self.t0_ns) / SECOND


@dataclass(frozen=True)
class Sent:
    """One call of a notifier: when (virtual seconds), to whom, what, and how it was answered."""

    t: float
    receiver: str
    action: str
    incident_id: str
    severity: str  # the page's: the worst of its incidents'
    key: str  # the idempotency key: the outbox entry's id
    test: bool
    note: str
    answer: Delivery
    folded: tuple[str, ...] = ()  # the incidents folded into the page


def answer(status: int, retry_after_s: float | None = None) -> Delivery:
    """What ``HttpNotifiers`` makes of an HTTP answer (tests of it: ``tests/test_paging.py``)."""
    if 200 <= status < 300:
        return Delivery(True)
    retry = http_retryable(status)
    error = f"HTTP {status}: scripted"
    return Delivery(False, retry=retry, retry_after_s=retry_after_s if retry else None, error=error)


class RecordingNotifier:
    """The real vendor notifier's capabilities and request, a scripted answer, nothing sent."""

    def __init__(self, real, factory: RecordingNotifiers) -> None:
        self.real = real
        self.name = real.name
        self.actions = real.actions
        self.resend_interval_s = real.resend_interval_s
        self._factory = factory

    async def notify(self, page: Page) -> Delivery:
        self.real.request(page)  # the vendor's request must build from the typed incident
        script = self._factory.scripts[self.name]
        delivery = script.pop(0) if script else Delivery(True)
        i = page.incident
        self._factory.sent.append(
            Sent(self._factory.clock.t, self.name, page.action, i.incident_id, page.severity,
                 page.key, page.test, page.note, delivery, tuple(f.incident_id for f in page.folded))
        )  # fmt: skip
        return delivery


class RecordingNotifiers:
    """The notifier factory of a timeline; ``sent`` and ``scripts`` outlive a restart."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[Sent] = []
        self.scripts: dict[str, list[Delivery]] = defaultdict(list)
        self._real = HttpNotifiers()

    def __call__(self, receiver) -> RecordingNotifier:
        return RecordingNotifier(self._real(receiver), self)

    async def close(self) -> None:
        pass


def paging(receivers: list[dict] | None = None, routes: list | None = None, **settings) -> dict:
    """A ``paging`` config: one PagerDuty receiver ``pd`` unless told, the root route to the first
    receiver, ``group_wait_s`` 0, retries from 1 s doubling up to 8 s."""
    receivers = receivers or [{"name": "pd", "type": "pagerduty", "routing_key": "r" * 32}]
    route = {"receiver": receivers[0]["name"], "group_wait_s": 0, "routes": routes or []}
    route.update(
        {k: settings.pop(k) for k in ("group_wait_s", "repeat_interval_s") if k in settings}
    )
    return {
        "receivers": receivers,
        "route": route,
        "retry_initial_s": 1,
        "retry_max_s": 8,
        **settings,
    }


class Timeline:
    """A real ``Pager`` on a real store and a fake clock (see the module's docstring)."""

    def __init__(self, store, config: dict, clock: FakeClock, notifiers: RecordingNotifiers):
        self.store = store
        self.config = config
        self.clock = clock
        self.notifiers = notifiers

        async def run_here(fn, *args):  # the store's thread is this one: a test has no other
            return fn(*args)

        self.sql = PagingSql(run_here, store, clock=clock)
        self.pager = Pager(
            self.sql,
            PagingConfig.model_validate(config),
            notifiers=notifiers,
            clock=clock,
            rand=lambda: 1.0,  # no jitter: each retry waits its full backoff
        )

    @classmethod
    async def start(cls, store, config: dict, t0_ns: int) -> Timeline:
        clock = FakeClock(t0_ns)
        timeline = cls(store, config, clock, RecordingNotifiers(clock))
        await timeline.pager.resume()
        return timeline

    async def restart(self, config: dict | None = None) -> Timeline:
        """A new pager on the same store (the old one is dropped, as a killed collector is);
        the clock and the record of what was sent go on."""
        again = Timeline(self.store, config or self.config, self.clock, self.notifiers)
        await again.pager.resume()
        return again

    # --- time ---------------------------------------------------------------------------------

    async def until(self, t: float) -> None:
        """Run the dispatcher up to virtual time ``t``, waking whenever it asks to."""
        target = self.clock.at(t)
        assert target >= self.clock.now_ns, f"time runs forward: {t} < {self.clock.t}"
        while True:
            while await self.pager.step():
                pass
            wake = self.pager.next_wake_ns()
            assert wake > self.clock.now_ns, "the pager asks to wake now after a full step"
            if wake > target:
                break
            self.clock.now_ns = wake
        self.clock.now_ns = target
        while await self.pager.step():
            pass

    async def at(self, t: float, *rows: IncidentRows) -> None:
        """At ``t``, the incident lifecycle hands ``rows`` to paging."""
        await self.until(t)
        for each in rows:
            await self.pager.on_incident_rows(each)

    # --- the world ----------------------------------------------------------------------------

    def answer_next(self, receiver: str, *deliveries: Delivery) -> None:
        self.notifiers.scripts[receiver].extend(deliveries)

    async def silence(self, *matchers: str, start: float, end: float) -> str:
        """A silence stored as the API stores it, and the pager told (as the API tells it)."""
        silence_id = f"sil-{len(self.pager.silences) + 1}-{start}"
        await self.sql.put_silence(
            {"silence_id": silence_id, "version": self.clock(), "created_by": "test", "comment": "",
             "matchers": orjson.dumps(list(matchers)).decode(),
             "starts_at": utc_text(self.clock.at(start)), "ends_at": utc_text(self.clock.at(end))}
        )  # fmt: skip
        await self.pager.load_silences()
        return silence_id

    def store_incident(self, record: IncidentRecord) -> None:
        """``record`` as the incidents table's newest version (what the lifecycle wrote)."""
        insert_rows(self.store, "incidents", [record.row()])

    # --- expectations -------------------------------------------------------------------------

    @property
    def sent(self) -> list[Sent]:
        return self.notifiers.sent

    def actions(self, receiver: str | None = None) -> list[tuple[float, str]]:
        """(time, action) of every call, in order, optionally of one receiver."""
        return [(s.t, s.action) for s in self.sent if receiver in (None, s.receiver)]

    def want(self, between: tuple[float, float], action: str, **fields) -> Sent:
        """Exactly one ``action`` (with ``fields``, e.g. severity) sent within ``between``."""
        low, high = between
        found = [
            s
            for s in self.sent
            if s.action == action
            and low <= s.t <= high
            and all(getattr(s, k) == v for k, v in fields.items())
        ]
        assert len(found) == 1, f"want one {action} {fields} in [{low}, {high}]: {self.actions()}"
        return found[0]

    def outbox(self) -> list[dict]:
        """Every notification's newest version, oldest first."""
        return query_rows(
            self.store,
            "SELECT * EXCEPT (incident) FROM page_outbox FINAL ORDER BY created_at, notification_id",
        )

    def events(self, incident_id: str) -> list[tuple[str, str, str]]:
        """(event, actor, detail) of the paging entries of the incident's timeline, in order."""
        rows = query_rows(
            self.store,
            "SELECT event, actor, detail FROM incident_events"
            " WHERE incident_id = {id:String} AND startsWith(event, 'page') ORDER BY at",
            {"id": incident_id},
        )
        return [(r["event"], r["actor"], r["detail"]) for r in rows]


# --- incidents and their events ---------------------------------------------------------------


def incident(incident_id: str = "inc-1", **fields) -> IncidentRecord:
    base = IncidentRecord(
        incident_id=incident_id, fingerprint=f"fp-{incident_id}", version=1, detector="loop",
        kind="repeated_call", incident_class="semantic", severity="SEV2", status="open",
        title="support: lookup_order called 5 times", summary="a loop", tenant="acme",
        service="support-svc", agent="support", session_id="s1", user_id="u1", trace_id="t1",
        span_id="sp1", tool="lookup_order", evidence=("call 5",), first_seen_ns=SECOND,
        last_seen_ns=SECOND, occurrences=5, sessions_affected=1, users_affected=1, link="",
    )  # fmt: skip
    return dataclasses.replace(base, **fields)


def happened(
    kind: str, record: IncidentRecord, actor: str = "agentwatch", detail: str = ""
) -> IncidentRows:
    """What the lifecycle hands its listeners for one ``kind`` event (``opened``, ``escalated``,
    ``acknowledged``, ``resolved`` …): the incident's new version and the event."""
    status = {"acknowledged": "acknowledged", "resolved": "resolved"}.get(kind, record.status)
    version = dataclasses.replace(record, status=status, version=record.version + 1)
    event = IncidentEvent(record.incident_id, record.fingerprint, 0, kind, actor, detail)
    return IncidentRows([version], [event])


def opened(record: IncidentRecord) -> IncidentRows:
    return happened("opened", record)


def escalated(record: IncidentRecord, severity: str) -> IncidentRows:
    return happened("escalated", dataclasses.replace(record, severity=severity))


def acknowledged(record: IncidentRecord, actor: str = "ann") -> IncidentRows:
    return happened("acknowledged", record, actor, "on it")


def resolved(
    record: IncidentRecord, actor: str = "agentwatch", detail: str = "quiet"
) -> IncidentRows:
    return happened("resolved", record, actor, detail)
