"""One pager among several collectors: the holder of the ``paging`` lease pages, the others don't.

Collectors that share a store each open incidents, but only one of them runs the pager (its
dispatcher, its outbox in memory, its firing pages). It learns of every collector's incident
events by reading ``incident_events`` every ``poll_s`` (its own arrive at once, in process), so a
page carries the incidents of a run whichever collector saw them, and an acknowledge made on any
collector's console reaches the pager. When the holder stops renewing (it died, hung, or lost
the store) for the lease's ``ttl_s``, another collector takes the lease, resumes the outbox where
it was left (``Pager.resume``: pending notifications, firing pages) and goes on; a clean stop
releases the lease at once.

Delivery is at least once, like Alertmanager's: a notification sent by an owner that died before
it wrote ``sent`` is sent again by the next owner (PagerDuty, Opsgenie and Alertmanager fold it
by its dedup key; Slack and webhooks may show it twice). An owner checks that it still holds the
lease right before each send, so two live owners never page (``collector.store.lease``).
Events are routed idempotently (``Grouping``), so an event read twice (in process and from the
table, or in the overlap of two reads) pages once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from analyzer.incidents.model import IncidentEvent, IncidentRecord, IncidentRows
from analyzer.paging.grouping import FIRES, SETTLES
from collector.store.lease import Lease

log = logging.getLogger("agentwatch.paging")

ROUTED = (*FIRES, *SETTLES)
# Events are read again this far back each poll: a collector's insert can land (and a clock can
# lag) a little after a later one; the routing is idempotent, so a re-read costs nothing.
OVERLAP_NS = 30 * 1_000_000_000

ReadEvents = Callable[[int, tuple[str, ...]], Awaitable[list[tuple[IncidentEvent, IncidentRecord]]]]


class PagingLeader:
    """Keeps the ``paging`` lease and runs the pager while it is held."""

    def __init__(
        self,
        make_pager: Callable[[], object],
        lease: Lease,
        run_store: Callable[..., Awaitable],
        read_events: ReadEvents,
        *,
        renew_s: float = 5.0,
        poll_s: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.make_pager = make_pager
        self.lease = lease
        self.run_store = run_store
        self.read_events = read_events
        self.renew_s = renew_s
        self.poll_s = poll_s
        self.clock = clock
        self.pager = None  # the running Pager while the lease is held
        self._cursor_ns = 0
        self._routed: dict[tuple, int] = {}  # events routed (key -> at_ns), within the overlap
        self._polls = 0
        self._task: asyncio.Task | None = None

    @property
    def leading(self) -> bool:
        return self.pager is not None and self.lease.held()

    async def start(self) -> None:
        """Try for the lease now (a lone collector pages from its first incident), then keep at it."""
        await self._keep_lease()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._step_down()
        try:
            await self.run_store(self.lease.release)
        except Exception as exc:  # the store is gone: the lease lapses by itself
            log.warning(
                "paging lease not released (%s): it lapses in %.0f s", exc, self.lease.ttl_s
            )

    async def on_incident_rows(self, rows: IncidentRows) -> None:
        """``Collector.incident_listeners`` entry: this collector's own incidents, at once when it
        pages (otherwise the collector that pages reads them from the store)."""
        if self.leading:
            for event in rows.events:
                self._routed[_key(event)] = event.at_ns
            await self.pager.on_incident_rows(rows)

    async def _run(self) -> None:
        next_renew = time.monotonic() + self.renew_s
        while True:
            try:
                await asyncio.sleep(self.poll_s)
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + self.renew_s
                    await self._keep_lease()
                if self.leading:
                    await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("paging leadership step failed; trying again")

    async def _keep_lease(self) -> None:
        try:
            held = await self.run_store(self.lease.acquire)
        except Exception as exc:
            log.warning("paging lease not renewed (%s)", exc)
            held = self.lease.held()
        if held and self.pager is None:
            self._cursor_ns = self.clock() - OVERLAP_NS
            pager = self.make_pager()
            await pager.start()  # the outbox as the last owner left it
            self.pager = pager
            log.info("paging: this collector pages now (lease term %d)", self.lease.term)
            await self._poll()
        elif not held and self.pager is not None:
            log.warning("paging: lease lost; another collector pages now")
            await self._step_down()

    async def _step_down(self) -> None:
        pager, self.pager = self.pager, None
        if pager is not None:
            await pager.stop()

    async def _poll(self) -> None:
        """Every collector's routed incident events since the cursor, and test pages queued by
        other collectors' APIs."""
        now = self.clock()
        pairs = await self.read_events(self._cursor_ns, ROUTED)
        self._cursor_ns = max(self._cursor_ns, now - OVERLAP_NS)
        fresh = [(e, r) for e, r in pairs if _key(e) not in self._routed]
        for event, _ in fresh:
            self._routed[_key(event)] = event.at_ns
        self._routed = {k: at for k, at in self._routed.items() if at >= self._cursor_ns}
        if self.pager is None:
            return
        if fresh:
            await self.pager.on_events(fresh)
        self._polls += 1
        if self._polls % 5 == 1:  # test pages are rare: the outbox is read every 5th poll
            await self.pager.adopt_queued()


def _key(event: IncidentEvent) -> tuple:
    return (event.incident_id, event.at_ns, event.event, event.actor)
