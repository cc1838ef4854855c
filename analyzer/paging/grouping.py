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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from analyzer.incidents.model import IncidentRecord
from analyzer.paging.model import Changes, Firing, FiringTable
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
                self.firing.add(firing)
                mine.append(firing)
        for firing in mine:
            firing.incident = incident
            if not firing.paged:
                if not firing.acknowledged:
                    self.trigger(firing, now_ns, changes)
            elif kind == "escalated":
                waiting = self.outbox.waiting_trigger(firing)
                if waiting is not None:  # fold the escalation into the trigger not yet sent
                    waiting.incident = incident
                    changes.changed.append(waiting)
                else:
                    changes.new.append(self.outbox.new(firing, "trigger", now_ns))

    def _settles(
        self, kind: str, note: str, incident: IncidentRecord, now_ns: int, changes: Changes
    ) -> None:
        for firing in self.firing.of_incident(incident.incident_id):
            firing.incident = incident
            if kind == "resolved":
                self.firing.remove(firing)
            else:
                firing.acknowledged = True
            if not firing.paged:
                continue
            waiting = self.outbox.waiting_trigger(firing)
            if kind == "resolved" and waiting is not None and len(firing.enqueued) == 1:
                self.outbox.supersede(waiting, "resolved before group_wait elapsed")
                changes.changed.append(waiting)  # never paged
                continue
            changes.new.append(self.outbox.new(firing, SETTLES[kind], now_ns, note=note))

    def trigger(self, firing: Firing, now_ns: int, changes: Changes) -> None:
        """``firing``'s first trigger, due after its route's group_wait, unless a silence mutes it
        (then the repeat stage tries again until the silence ends)."""
        if self.silencer.mutes(firing, labels_of(firing.incident), now_ns, changes):
            return
        route = self.routes.get(firing.route)
        wait_ns = int((route.group_wait_s if route else 0) * 1e9)
        changes.new.append(self.outbox.new(firing, "trigger", now_ns, due_ns=now_ns + wait_ns))
