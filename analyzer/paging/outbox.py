"""The outbox: notifications not yet settled, kept in memory and written before they are sent.

Every notification is a row of ``page_outbox`` written ``pending`` (through the store port)
before any send, and written again when it settles (``sent``, ``failed``, ``skipped``,
``superseded``); pending ones are loaded again at start, so nothing waits in memory only. Sends to
one (route, receiver, incident) go strictly in order: only the oldest pending notification of a
key is ever due (``due``). A settled notification is appended to its incident's timeline
(``paged``, ``page_acknowledged``, ``page_resolved``, ``page_failed``), as Alertmanager's
notification log records what was sent. An incident folded into another's page has ``folded``
rows instead (``folded``): never sent, they say which page carries it (``page_of``) and rebuild
the page after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping

from analyzer.paging.model import PAGE_EVENT, Changes, Firing, Key, Notification, page_event
from analyzer.paging.store import PagingStore


class Outbox:
    def __init__(self, store: PagingStore, receiver_types: Mapping[str, str], metrics) -> None:
        self._store = store
        self._receiver_types = receiver_types
        self._metrics = metrics
        self.pending: dict[str, Notification] = {}
        self.known: set[str] = set()  # test pages this outbox had (Pager.adopt_queued)

    def restore(self, notifications: list[Notification]) -> None:
        """The pending notifications the store kept (``PagingStore.pending``)."""
        for n in notifications:
            self.pending[n.notification_id] = n
            if n.reason == "test":
                self.known.add(n.notification_id)

    def new(self, firing: Firing, action: str, now_ns: int, due_ns: int = 0, **kw) -> Notification:
        """A pending ``action`` for ``firing``, due at ``due_ns`` (0: now); written by ``commit``."""
        n = self._notification(
            firing, action, now_ns, next_attempt_ns=due_ns or now_ns, folded=firing.folded, **kw
        )
        if action == "trigger":
            firing.paged = True
            firing.last_trigger_ns = now_ns
        firing.enqueued.append(n.notification_id)
        self.pending[n.notification_id] = n
        if n.reason == "test":
            self.known.add(n.notification_id)
        return n

    def folded(self, firing: Firing, action: str, now_ns: int, note: str) -> Notification:
        """The row that keeps a folded incident's part in its page (``trigger`` when it joined,
        ``resolve`` when it resolved): status ``folded``, ``page_of`` the page's incident; never
        sent, and what restores the page after a restart."""
        assert firing.page is not None, "only a folded firing has a folded row"
        return self._notification(
            firing, action, now_ns, next_attempt_ns=now_ns, note=note, status="folded",
            page_of=firing.page.incident.incident_id,
        )  # fmt: skip

    def _notification(self, firing: Firing, action: str, now_ns: int, **kw) -> Notification:
        return Notification(
            notification_id=Notification.new_id(),
            route=firing.route,
            receiver=firing.receiver,
            receiver_type=self._receiver_types.get(firing.receiver, ""),
            action=action,
            incident=firing.incident,
            created_ns=now_ns,
            **kw,
        )

    def waiting_trigger(self, firing: Firing) -> Notification | None:
        """``firing``'s trigger not yet tried (waiting for its group_wait), if any."""
        for nid in firing.enqueued:
            n = self.pending.get(nid)
            if n and n.action == "trigger" and n.attempts == 0 and not n.in_flight:
                return n
        return None

    def supersede(self, n: Notification, why: str) -> None:
        n.status, n.last_error = "superseded", why
        del self.pending[n.notification_id]

    def busy(self) -> set[Key]:
        """Keys with a notification pending."""
        return {n.key for n in self.pending.values()}

    def heads(self) -> list[Notification]:
        """The oldest pending notification of each key (the only one that may be sent)."""
        found: dict[Key, Notification] = {}
        for n in sorted(self.pending.values(), key=lambda n: (n.created_ns, n.notification_id)):
            found.setdefault(n.key, n)
        return list(found.values())

    def due(self, now_ns: int) -> list[Notification]:
        return [n for n in self.heads() if not n.in_flight and n.next_attempt_ns <= now_ns]

    def next_due_ns(self) -> int | None:
        waits = [n.next_attempt_ns for n in self.heads() if not n.in_flight]
        return min(waits) if waits else None

    async def commit(self, changes: Changes) -> None:
        await self._store.write(changes.new + changes.changed)
        await self._store.append_events(changes.events)

    async def settled(self, n: Notification, now_ns: int) -> None:
        """``n`` was tried (the retry stage set its status): write it, and what was paged."""
        if n.status != "pending":
            self.pending.pop(n.notification_id, None)
        self._metrics.pages_pending.set(len(self.pending))
        await self._store.write([n])
        if n.reason == "test" or n.status not in ("sent", "failed"):
            return
        if n.status == "sent" and n.reason != "repeat":
            await self._store.append_events([page_event(n, PAGE_EVENT[n.action], n.action, now_ns)])
        elif n.status == "failed":
            detail = f"{n.action}: {n.last_error}"
            await self._store.append_events([page_event(n, "page_failed", detail, now_ns)])
