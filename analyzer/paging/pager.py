"""Paging: incidents -> a pipeline of stages -> a durable outbox -> notifiers, retried across restarts.

The stages are Alertmanager's notify pipeline (``notify/notify.go``), each a small unit with its
clock passed in, testable alone (``tests/analyzer/test_paging_timeline.py`` runs them on a fake
clock):

====================  =======================================================================
stage                 file: responsibility
====================  =======================================================================
route                 ``routing.py``: the route tree over an incident's labels (pure)
silence               ``silencer.py``: active silences; a muted firing is noted, paged later
group wait            ``grouping.py``: incident events -> trigger / acknowledge / resolve,
                      a trigger held ``group_wait_s``, escalations folded, early resolves
                      superseded, the incidents of one run folded into one page
outbox                ``outbox.py``: pending notifications, written before sending, in order
                      per (route, receiver, incident); what was paged goes to the timeline
dedup / repeat        ``repeat.py``: re-page every ``repeat_interval_s`` / ``resend_interval_s``
retry                 ``retry_stage.py``: one attempt, then sent / pending (backoff) / failed /
                      skipped
notify                ``notifiers/``: one file per pager; typed config, declared capabilities
====================  =======================================================================

The ``Pager`` only wires them and runs the dispatcher: its dependencies are narrow: the store port
(``store.PagingStore``, where all of paging's SQL is), the paging config, a clock (nanoseconds) and
a notifier factory (``notifiers.http.HttpNotifiers`` in the collector). Incidents arrive typed
(``analyzer.incidents.model.IncidentRows``) from ``Collector.incident_listeners``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace

from analyzer.incidents.model import IncidentEvent, IncidentRecord, IncidentRows
from analyzer.paging.grouping import Grouping
from analyzer.paging.model import Changes, Firing, FiringTable, Notification, incident_for_test_page
from analyzer.paging.notifiers import NotifierFactory
from analyzer.paging.outbox import Outbox
from analyzer.paging.repeat import Repeat
from analyzer.paging.retry_stage import RetryStage
from analyzer.paging.routing import Route, Silence, build_route
from analyzer.paging.silencer import Silencer
from analyzer.paging.store import PagingStore
from collector.metrics import Metrics

log = logging.getLogger("agentwatch.paging")


class Pager:
    def __init__(
        self,
        store: PagingStore,
        config,
        *,
        notifiers: NotifierFactory,
        clock: Callable[[], int] = time.time_ns,
        metrics: Metrics | None = None,
        tick_s: float = 0.5,
        rand: Callable[[], float] = random.random,
        may_send: Callable[[], bool] = lambda: True,
    ) -> None:
        """``config``: ``agentwatch.config.PagingConfig``; ``clock``: nanoseconds since the epoch;
        ``tick_s``: the dispatcher's longest sleep; ``rand``: the retry jitter's draw;
        ``may_send``: asked right before sending (``PagingLeader``: this collector still holds
        the paging lease)."""
        self.clock = clock
        self.may_send = may_send
        self.tick_s = tick_s
        self._store = store
        self._factory = notifiers
        self.metrics = metrics or Metrics()
        self.root = build_route(config.route)
        self.routes: dict[str, Route] = {r.name: r for r in self.root.walk()}
        self.notifiers = {r.name: self._factory(r) for r in config.receivers}
        self.firing = FiringTable()
        self.silencer = Silencer(store)
        self.outbox = Outbox(store, {r.name: r.type for r in config.receivers}, self.metrics)
        self.grouping = Grouping(self.root, self.routes, self.firing, self.silencer, self.outbox)
        self.repeat = Repeat(self.routes, self.notifiers, self.firing, self.outbox, self.grouping)
        self.retry = RetryStage(self.notifiers, config, self.metrics, rand)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def silences(self) -> list[Silence]:
        return self.silencer.silences

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.resume()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the dispatcher; a page in flight stays pending (sent again after a restart)."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._factory.close()

    async def resume(self) -> None:
        """Silences, then the outbox as it was left: pending notifications, firing pages with the
        incidents folded into them (a resolve for the pages whose incidents all resolved
        meanwhile), and open incidents no route has seen (opened while paging was off), routed as
        if they had just opened."""
        now = self.clock()
        await self.silencer.load(now)
        self.outbox.restore(await self._store.pending())
        firings = await self._store.firing()
        resolved = await self._store.resolved(f.incident.incident_id for f, _ in firings)
        for firing, _ in firings:
            if firing.incident.incident_id in resolved:
                firing.incident = replace(firing.incident, status="resolved")
        pages = {f.key: f for f, page_of in firings if not page_of}
        changes = Changes()
        seen = set()
        for firing, page_of in firings:
            page = pages.get((firing.route, firing.receiver, page_of)) if page_of else None
            if page is None:
                if not page_of or firing.incident.status == "resolved":
                    seen.add(firing.incident.incident_id)
                continue  # a folded incident whose page is gone: routed again below if open
            firing.page, firing.acknowledged = page, False
            page.members.append(firing)
            seen.add(firing.incident.incident_id)
        for page in pages.values():
            if not page.live():
                note = "resolved while paging was down"
                changes.new.append(self.outbox.new(page, "resolve", now, note=note))
                continue
            self.firing.add(page)  # resolved itself or not, it carries the page
            for firing in page.members:
                if firing.incident.status != "resolved":
                    self.firing.add(firing)
                else:
                    note = "resolved while paging was down"
                    changes.new.append(self.outbox.folded(firing, "resolve", now, note))
        await self.outbox.commit(changes)
        if self.outbox.pending:
            log.info(
                "paging: %d pending notification(s) resumed from the outbox",
                len(self.outbox.pending),
            )
        unseen = [r for r in await self._store.open_incidents() if r.incident_id not in seen]
        await self._route([("opened", "", record) for record in unseen])

    async def load_silences(self) -> None:
        """Read the silences now (the API changed one)."""
        await self.silencer.load(self.clock())

    # --- incidents in ---------------------------------------------------------------------------

    async def on_incident_rows(self, rows: IncidentRows) -> None:
        """``Collector.incident_listeners`` entry: route every event of ``rows``."""
        await self._route([(e.event, _note(e), record) for e, record in _pairs(rows)])

    async def on_events(self, pairs: list[tuple[IncidentEvent, IncidentRecord]]) -> None:
        """Events read from the store (``PagingLeader``: every collector's), each with its
        incident's newest version."""
        await self._route([(e.event, _note(e), record) for e, record in pairs])

    async def adopt_queued(self) -> None:
        """Test pages another collector's API queued in the outbox (only the paging collector
        sends): taken into this outbox once."""
        async with self._lock:
            queued = [
                n for n in await self._store.pending()
                if n.reason == "test" and n.notification_id not in self.outbox.known
            ]  # fmt: skip
            self.outbox.restore(queued)
        if queued:
            self._wake.set()

    async def _route(self, events: list[tuple[str, str, IncidentRecord]]) -> None:
        if not events:
            return
        changes = Changes()
        async with self._lock:
            now = self.clock()
            for kind, note, incident in events:
                self.grouping.on_event(kind, note, incident, now, changes)
            await self.outbox.commit(changes)
        if changes.new:
            self._wake.set()

    async def enqueue_test(self, route_name: str, note: str = "") -> list[Notification]:
        """A test page through ``route_name``'s receiver: a trigger, then its resolve."""
        route = self.routes[route_name]
        now = self.clock()
        firing = Firing(route.name, route.receiver, incident_for_test_page(now))
        async with self._lock:
            trigger = self.outbox.new(firing, "trigger", now, reason="test", note=note)
            resolve = self.outbox.new(firing, "resolve", now + 1, reason="test", note=note)
            await self.outbox.commit(Changes(new=[trigger, resolve]))
        self._wake.set()
        return [trigger, resolve]

    # --- the dispatcher -------------------------------------------------------------------------

    async def step(self) -> bool:
        """One pass: the repeat stage, then every due notification tried (at once, one per key).
        True if anything was tried."""
        await self.silencer.refresh(self.clock())
        async with self._lock:
            changes = Changes()
            self.repeat.due(self.clock(), changes)
            if changes:
                await self.outbox.commit(changes)
        due = self.outbox.due(self.clock()) if self.may_send() else []
        if due:
            await asyncio.gather(*(self._send(n) for n in due))
        return bool(due)

    def next_wake_ns(self) -> int:
        """When the next ``step`` has something to do, unless an incident arrives first."""
        now = self.clock()
        found = [self.silencer.next_change_ns(now), self.outbox.next_due_ns()]
        return min(ns for ns in (*found, self.repeat.next_due_ns()) if ns is not None)

    async def _send(self, n: Notification) -> None:
        page = self.firing.get(n.key)
        if page is not None:  # the page as it is now: every incident folded into it
            n.folded = page.folded
        n.in_flight = True
        try:
            outcome = await self.retry.attempt(n)
        finally:
            n.in_flight = False
        async with self._lock:
            now = self.clock()
            self.retry.settle(n, outcome, now)
            await self.outbox.settled(n, now)

    async def _run(self) -> None:
        while True:
            try:
                self._wake.clear()
                if await self.step():
                    continue
                sleep_s = (self.next_wake_ns() - self.clock()) / 1e9
                try:
                    await asyncio.wait_for(self._wake.wait(), min(self.tick_s, max(0.01, sleep_s)))
                except TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("paging dispatcher failed; trying again")
                await asyncio.sleep(1.0)


def _note(event: IncidentEvent) -> str:
    """Who acknowledged or resolved, and why (``ann: on it``)."""
    return f"{event.actor}: {event.detail}".strip(": ")


def _pairs(rows: IncidentRows) -> list[tuple[IncidentEvent, IncidentRecord]]:
    """(event, incident) pairs: the lifecycle appends one version per event, in the same order;
    otherwise each event goes with its incident's newest version."""
    if len(rows.incidents) == len(rows.events):
        return list(zip(rows.events, rows.incidents, strict=True))
    newest: dict[str, IncidentRecord] = {}
    for record in rows.incidents:
        if record.incident_id not in newest or record.version >= newest[record.incident_id].version:
            newest[record.incident_id] = record
    return [(e, newest[e.incident_id]) for e in rows.events if e.incident_id in newest]
