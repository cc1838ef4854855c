"""The dedup/repeat stage: what a firing incident is sent again, and when.

A firing with nothing pending is re-paged (a new trigger, ``reason='repeat'``, a new idempotency
key) once ``repeat_interval_s`` has passed since its last trigger, while unacknowledged, and every
``resend_interval_s`` to a notifier that declares one (Alertmanager forgets alerts nobody re-sends),
acknowledged or not. A firing never paged (a silence muted it) is offered to the grouping stage
again: it pages once the silence has ended, if the incident still fires. An incident folded into
another's page (``Firing.page``) is re-sent by that page, never on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from analyzer.paging.grouping import Grouping
from analyzer.paging.model import Changes, Firing, FiringTable
from analyzer.paging.notifiers import Notifier
from analyzer.paging.outbox import Outbox
from analyzer.paging.routing import Route


@dataclass(eq=False)
class Repeat:
    routes: Mapping[str, Route]  # by name
    notifiers: Mapping[str, Notifier]  # by receiver name
    firing: FiringTable
    outbox: Outbox
    grouping: Grouping  # a firing a silence held back is offered to it again

    def due(self, now_ns: int, changes: Changes) -> None:
        busy = self.outbox.busy()
        for firing in self.firing:
            if firing.key in busy or firing.page is not None:
                continue
            if not firing.paged:
                if not firing.acknowledged:  # e.g. its silence ended while it still fires
                    self.grouping.trigger(firing, now_ns, changes)
                continue
            next_ns = self._next_ns(firing)
            if next_ns is not None and now_ns >= next_ns:
                changes.new.append(self.outbox.new(firing, "trigger", now_ns, reason="repeat"))

    def next_due_ns(self) -> int | None:
        """The soonest re-send of a firing with nothing pending."""
        busy = self.outbox.busy()
        pages = [f for f in self.firing if f.paged and f.page is None and f.key not in busy]
        found = [self._next_ns(f) for f in pages]
        found = [ns for ns in found if ns is not None]
        return min(found) if found else None

    def interval_s(self, firing: Firing) -> float | None:
        route = self.routes.get(firing.route)
        notifier = self.notifiers.get(firing.receiver)
        intervals = []
        if route is not None and not firing.acknowledged:
            intervals.append(route.repeat_interval_s)
        if notifier is not None and notifier.resend_interval_s is not None:
            intervals.append(notifier.resend_interval_s)
        return min(intervals) if intervals else None

    def _next_ns(self, firing: Firing) -> int | None:
        interval = self.interval_s(firing)
        return None if interval is None else firing.last_trigger_ns + int(interval * 1e9)
