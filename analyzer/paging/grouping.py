"""The route and group-wait stages: an incident event -> notifications per matching route.

An incident already is Alertmanager's group: findings with one fingerprint update one incident,
so a route sends one page per incident, never one per span.

- ``opened`` / ``escalated`` / ``updated``: the incident is routed (``routing.match_routes``);
  each new (route, receiver) is a firing whose trigger waits the route's ``group_wait_s``, unless
  a silence mutes it (``Silencer``). An escalation while that trigger waits is folded into it; an
  escalation after it was tried is a new trigger (the pager learns the new severity). ``updated``
  pages nothing: it refreshes what the next re-send carries.
- ``acknowledged`` / ``resolved``: ``acknowledge`` / ``resolve`` to every firing that paged it,
  in order after the trigger. An incident resolved while its only trigger waits is never paged
  (the trigger is ``superseded``).

One problem, one page: an incident whose run (``model.correlated``) already has a live page on
the (route, receiver) is folded into it (``page_folded`` on its timeline, a ``folded`` outbox row
naming the page in ``page_of``) instead of paging again. The page is triggered again only when
it gets worse (a SEV1 joins a SEV2 page); a trigger still waiting carries the newcomer. A person
acknowledging any incident of the page acknowledges the page (someone has the run); the page
resolves when its last incident does. A silence mutes a page only if it mutes every live incident
of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from analyzer.incidents.model import SEVERITY_RANK, IncidentRecord
from analyzer.paging.model import Changes, Firing, FiringTable, page_event
from analyzer.paging.outbox import Outbox
from analyzer.paging.routing import Route, labels_of, match_routes
from analyzer.paging.silencer import Silencer

FIRES = ("opened", "escalated", "updated")
SETTLES = {"acknowledged": "acknowledge", "resolved": "resolve"}


@dataclass(eq=False)
class Grouping:
    root: Route
    routes: Mapping[str, Route]  # by name
    firing: FiringTable
    silencer: Silencer
    outbox: Outbox

    def on_event(
        self, kind: str, note: str, incident: IncidentRecord, now_ns: int, changes: Changes
    ) -> None:
        if kind in FIRES:
            self._fires(kind, incident, now_ns, changes)
        elif kind in SETTLES:
            self._settles(kind, note, incident, now_ns, changes)

    def _fires(self, kind: str, incident: IncidentRecord, now_ns: int, changes: Changes) -> None:
        if incident.status == "resolved":
            return
        mine = self.firing.of_incident(incident.incident_id)
        known = {(f.route, f.receiver) for f in mine}
        for route in match_routes(self.root, labels_of(incident)):
            if (route.name, route.receiver) not in known:
                known.add((route.name, route.receiver))
                # acknowledged already: a person has it, no trigger (acknowledge/resolve follow)
                firing = Firing(route.name, route.receiver, incident)
                firing.acknowledged = incident.status == "acknowledged"
                page, why = self.firing.page_for(route.name, route.receiver, incident)
                if page is not None:
                    self._fold(firing, page, why, now_ns, changes)
                    continue
                self.firing.add(firing)
                mine.append(firing)
        for firing in mine:
            page = firing.page or firing
            before = page.severity
            firing.incident = incident
            if not page.paged:
                if not page.acknowledged:
                    self.trigger(page, now_ns, changes)
            elif kind == "escalated":
                self._page_changed(page, before, now_ns, changes)

    def _fold(self, firing: Firing, page: Firing, why: str, now_ns: int, changes: Changes) -> None:
        """``firing`` joins ``page``: noted on its timeline and in the outbox, paged through it."""
        before = page.severity
        firing.page, firing.paged = page, True  # its page pages for it
        page.members.append(firing)
        self.firing.add(firing)
        detail = f"folded into page of {page.incident.incident_id} ({why})"
        changes.events.append(page_event(firing, "page_folded", detail, now_ns))
        changes.new.append(self.outbox.folded(firing, "trigger", now_ns, detail))
        if not page.paged:
            if not page.acknowledged:  # muted so far: the newcomer may not be
                self.trigger(page, now_ns, changes)
        else:
            self._page_changed(page, before, now_ns, changes)

    def _page_changed(self, page: Firing, before: str, now_ns: int, changes: Changes) -> None:
        """An incident of ``page`` joined or escalated: a trigger still waiting carries it; a page
        now worse than ``before`` is triggered again (the pager learns the severity)."""
        waiting = self.outbox.waiting_trigger(page)
        if waiting is not None:
            waiting.incident, waiting.folded = page.incident, page.folded
            changes.changed.append(waiting)
        elif SEVERITY_RANK[page.severity] < SEVERITY_RANK[before]:
            changes.new.append(self.outbox.new(page, "trigger", now_ns))

    def _settles(
        self, kind: str, note: str, incident: IncidentRecord, now_ns: int, changes: Changes
    ) -> None:
        for firing in self.firing.of_incident(incident.incident_id):
            firing.incident = incident
            page, why = firing.page or firing, note
            if kind == "acknowledged":
                if page.acknowledged:  # someone has the page already
                    continue
                page.acknowledged = True
                if firing.page is not None:
                    why = f"{note} (via {incident.incident_id})".strip()
            else:
                if firing.page is not None:  # kept in the page's list, no longer firing
                    self.firing.remove(firing)
                    changes.new.append(self.outbox.folded(firing, "resolve", now_ns, note))
                if page.live():  # the page goes on while one of its incidents fires
                    continue
                self.firing.remove(page)
            if page.paged:
                self._settle_page(page, SETTLES[kind], why, now_ns, changes)

    def _settle_page(
        self, page: Firing, action: str, note: str, now_ns: int, changes: Changes
    ) -> None:
        waiting = self.outbox.waiting_trigger(page)
        if action == "resolve" and waiting is not None and len(page.enqueued) == 1:
            self.outbox.supersede(waiting, "resolved before group_wait elapsed")
            changes.changed.append(waiting)  # never paged
            return
        changes.new.append(self.outbox.new(page, action, now_ns, note=note))

    def trigger(self, firing: Firing, now_ns: int, changes: Changes) -> None:
        """``firing``'s first trigger, due after its route's group_wait, unless a silence mutes it
        (then the repeat stage tries again until the silence ends): a silence mutes a page when
        it mutes each of its incidents still firing."""
        live = [f for f in (firing, *firing.members) if f.incident.status != "resolved"]
        if all(self.silencer.mutes(f, labels_of(f.incident), now_ns, changes) for f in live):
            return
        route = self.routes.get(firing.route)
        wait_ns = int((route.group_wait_s if route else 0) * 1e9)
        changes.new.append(self.outbox.new(firing, "trigger", now_ns, due_ns=now_ns + wait_ns))
