"""Paging: incident rows -> routes -> a durable outbox -> notifiers, with retries that survive restarts.

Stages, as in Alertmanager's pipeline: **route** (``analyzer.paging.routing``), **silence**, **group**
(an incident already is the group: findings with one fingerprint update one incident, so a route
sends one page per incident, never one per span), **dedup/repeat**, then **send** with retries.

- ``opened`` / ``escalated`` -> a ``trigger`` per matching route, due after the route's
  ``group_wait_s``. An escalation while that trigger waits is folded into it; an incident
  resolved while it waits is never paged (the trigger is marked ``superseded``).
- ``updated`` pages nothing; it refreshes what the next re-send carries.
- ``acknowledged`` / ``resolved`` -> ``acknowledge`` / ``resolve`` to every route that paged it,
  in order after the trigger (the quiet-period auto-resolve is a ``resolved`` event like any).
- While an incident fires it is re-sent every ``repeat_interval_s`` (unacknowledged only), and
  to Alertmanager receivers every ``resend_interval_s`` (Alertmanager resolves alerts nobody
  re-sends). A silenced incident is paged when the silence ends, if it still fires.

The outbox is ``page_outbox`` (one row per version, ReplacingMergeTree): a notification is
written ``pending`` before it is sent, then ``sent`` / ``failed`` / ``skipped`` / ``superseded``.
Pending ones are loaded again at start, so nothing waits in memory only. Sends to one
(route, receiver, incident) go strictly in order. What was paged (or failed) is appended to
``incident_events`` (``paged``, ``page_acknowledged``, ``page_resolved``, ``page_failed``,
``page_silenced``; actor ``route/receiver``).

Retries (``collector.retry``, shared with the writer and the forwarder): network errors, 408, 429
and 5xx are retried with jittered exponential backoff (``retry_initial_s`` doubling up to
``retry_max_s``, each delay drawn from [d/2, d]), never sooner than the server's ``Retry-After``.
Other 4xx are permanent (``failed``, visible in
``agentwatch alerts outbox`` and as ``page_failed``); so is a notification still failing after
``give_up_after_s``. We compute the delay ourselves instead of using tenacity/backoff: those
retry inside a coroutine's sleep, which a restart forgets, whereas here the next attempt time
is a column of the outbox row.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import orjson

from analyzer.incidents.model import utc_text
from analyzer.paging.notifiers import Page, build_notifier, deliver
from analyzer.paging.routing import (
    Route,
    Silence,
    build_route,
    labels_of,
    match_routes,
    parse_matcher,
    silenced_by,
)
from collector.retry import Backoff
from collector.store import insert_rows, query_rows

log = logging.getLogger("agentwatch.paging")

_INT_OUT = " SETTINGS output_format_json_quote_64bit_integers = 0"
_EVENT = {"trigger": "paged", "acknowledge": "page_acknowledged", "resolve": "page_resolved"}


@dataclass
class Notification:
    """One outbox row (its newest version)."""

    notification_id: str
    route: str
    receiver: str
    action: str  # trigger | acknowledge | resolve
    incident: dict
    created_ns: int
    reason: str = ""  # "" (an incident event), "repeat" (re-sent while firing) or "test"
    note: str = ""
    status: str = "pending"
    attempts: int = 0
    next_attempt_ns: int = 0
    sent_ns: int = 0
    last_error: str = ""
    version: int = 0
    in_flight: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.route, self.receiver, self.incident["incident_id"])


@dataclass
class Firing:
    """A (route, receiver, incident) that has fired and not resolved."""

    route: str
    receiver: str
    incident: dict
    paged: bool = False  # a trigger was enqueued
    acknowledged: bool = False
    last_trigger_ns: int = 0
    noted_silence: str = ""
    enqueued: list[str] = field(default_factory=list)  # notification ids, oldest first


class Pager:
    def __init__(self, collector, config, clock=time.time_ns, tick_s: float = 0.5) -> None:
        self.collector = collector
        self.config = config
        self.clock = clock
        self.tick_s = tick_s
        self.root = build_route(config.route)
        self.routes: dict[str, Route] = {r.name: r for r in self.root.walk()}
        self.receivers = {r.name: r for r in config.receivers}
        self.notifiers = {r.name: build_notifier(r) for r in config.receivers}
        self.pending: dict[str, Notification] = {}
        self.firing: dict[tuple[str, str, str], Firing] = {}
        self.silences: list[Silence] = []
        self._refused_silences: set[str] = set()
        self._silences_loaded_ns = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._version = 0

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.load_silences()
        await self._load_outbox()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=max(r.timeout_s for r in self.receivers.values()))
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._session:
            await self._session.close()

    async def _query(self, sql: str, params: dict | None = None) -> list[dict]:
        c = self.collector
        return await c.run_store(query_rows, c.store, sql + _INT_OUT, params)

    async def _load_outbox(self) -> None:
        """Pending notifications and firing incidents, as the outbox left them."""
        cols = (
            "notification_id, route, receiver, action, reason, incident, note, status, attempts,"
            " last_error, version, toUnixTimestamp64Nano(created_at) AS created_ns,"
            " toUnixTimestamp64Nano(next_attempt_at) AS next_attempt_ns"
        )
        rows = await self._query(
            f"SELECT {cols} FROM page_outbox FINAL WHERE status = 'pending' ORDER BY created_at"
        )
        for row in rows:
            row["incident"] = orjson.loads(row["incident"])
            n = Notification(**row)
            self.pending[n.notification_id] = n
            self._version = max(self._version, n.version)
        states = await self._query(
            "SELECT route, receiver, incident_id, argMax(action, created_at) AS last_action,"
            " argMax(incident, created_at) AS incident,"
            " toUnixTimestamp64Nano(maxIf(created_at, action = 'trigger')) AS last_trigger_ns,"
            " groupArray(notification_id) AS ids"
            " FROM page_outbox FINAL WHERE reason != 'test' AND status != 'superseded'"
            " GROUP BY route, receiver, incident_id HAVING last_action != 'resolve'"
        )
        now = self.clock()
        resolved = set()
        if states:
            ids = sorted({s["incident_id"] for s in states})
            current = await self._query(
                "SELECT incident_id, status FROM incidents_current"
                " WHERE has(JSONExtract({ids:String}, 'Array(String)'), incident_id)",
                {"ids": orjson.dumps(ids).decode()},
            )
            resolved = {r["incident_id"] for r in current if r["status"] == "resolved"}
        for s in states:
            incident = orjson.loads(s["incident"])
            firing = Firing(
                s["route"],
                s["receiver"],
                incident,
                paged=True,
                acknowledged=s["last_action"] == "acknowledge",
                last_trigger_ns=s["last_trigger_ns"],
                enqueued=list(s["ids"]),
            )
            self.firing[(s["route"], s["receiver"], s["incident_id"])] = firing
        # Resolved while no outbox row said so (stopped in between): send the resolve now.
        new = []
        for key, firing in list(self.firing.items()):
            if key[2] in resolved:
                del self.firing[key]
                new.append(self._new(firing, "resolve", now, note="resolved while paging was down"))
        await self._write(new)
        if self.pending:
            log.info(
                "paging: %d pending notification(s) resumed from the outbox", len(self.pending)
            )
        # Open incidents no route has seen (opened while paging was off or before the outbox row
        # was written) are routed as if they had just opened.
        paged = {key[2] for key in self.firing}
        unseen = [
            row
            for row in await self._query(
                "SELECT * EXCEPT (updated_at) FROM incidents FINAL WHERE status = 'open'"
            )
            if row["incident_id"] not in paged
        ]
        await self._route(
            _Rows(unseen, [{"event": "opened", **_ids(row)} for row in unseen])
        )

    async def load_silences(self) -> None:
        rows = await self._query(
            "SELECT silence_id, matchers, created_by, comment,"
            " toUnixTimestamp64Nano(starts_at) AS starts_ns,"
            " toUnixTimestamp64Nano(ends_at) AS ends_ns FROM silences FINAL"
            " WHERE ends_at > now64(9)"
        )
        self.silences = []
        for row in rows:
            try:
                self.silences.append(silence_from_row(row))
            except ValueError as exc:  # stored before matchers were RE2's: refused, said once
                if row["silence_id"] not in self._refused_silences:
                    self._refused_silences.add(row["silence_id"])
                    log.error("silence %s is not applied: %s", row["silence_id"], exc)
        self._silences_loaded_ns = self.clock()

    # --- incident events -> outbox ----------------------------------------------------------------

    async def on_incident_rows(self, rows) -> None:
        """``Collector.incident_listeners`` entry: route every event of ``rows``."""
        await self._route(
            _Rows([r.row() for r in rows.incidents], [e.row() for e in rows.events])
        )

    async def _route(self, rows: _Rows) -> None:
        pairs = _pairs(rows)
        if not pairs:
            return
        async with self._lock:
            now = self.clock()
            new, changed, events = [], [], []
            for event, incident in pairs:
                self._on_event(event, incident, now, new, changed, events)
            await self._write(new + changed)
            await self._events(events)
        if new:
            self._wake.set()

    def _on_event(self, event: dict, incident: dict, now: int, new, changed, events) -> None:
        kind, incident_id = event["event"], incident["incident_id"]
        mine = [f for k, f in self.firing.items() if k[2] == incident_id]
        if kind in ("opened", "escalated", "updated"):
            if incident["status"] == "resolved":
                return
            labels = labels_of(incident)
            known = {(f.route, f.receiver) for f in mine}
            for route in match_routes(self.root, labels):
                if (route.name, route.receiver) not in known:
                    firing = Firing(route.name, route.receiver, incident)
                    firing.acknowledged = incident["status"] == "acknowledged"  # a person has it
                    self.firing[(route.name, route.receiver, incident_id)] = firing
                    mine.append(firing)
            for firing in mine:
                firing.incident = incident
                if not firing.paged:
                    if not firing.acknowledged:
                        self._trigger_unless_silenced(firing, labels, now, new, events)
                elif kind == "escalated":
                    waiting = self._waiting_trigger(firing)
                    if waiting is not None:  # fold the escalation into the trigger not yet sent
                        waiting.incident = incident
                        changed.append(waiting)
                    else:
                        new.append(self._new(firing, "trigger", now))
        elif kind in ("acknowledged", "resolved"):
            action = "acknowledge" if kind == "acknowledged" else "resolve"
            note = f"{event.get('actor', '')}: {event.get('detail', '')}".strip(": ")
            for firing in mine:
                firing.incident = incident
                if kind == "resolved":
                    del self.firing[(firing.route, firing.receiver, incident_id)]
                else:
                    firing.acknowledged = True
                if not firing.paged:
                    continue
                waiting = self._waiting_trigger(firing)
                if kind == "resolved" and waiting is not None and len(firing.enqueued) == 1:
                    waiting.status = "superseded"  # resolved within group_wait: never paged
                    waiting.last_error = "resolved before group_wait elapsed"
                    del self.pending[waiting.notification_id]
                    changed.append(waiting)
                    continue
                new.append(self._new(firing, action, now, note=note))

    def _trigger_unless_silenced(self, firing: Firing, labels, now: int, new, events) -> None:
        silence = silenced_by(self.silences, labels, now)
        if silence is None:
            route = self.routes.get(firing.route)
            wait_ns = int((route.group_wait_s if route else 0) * 1e9)
            new.append(self._new(firing, "trigger", now, due_ns=now + wait_ns))
        elif firing.noted_silence != silence.silence_id:
            firing.noted_silence = silence.silence_id
            events.append(
                self._event(
                    firing.incident, "page_silenced", firing, f"silence {silence.silence_id}"
                )
            )

    def _waiting_trigger(self, firing: Firing) -> Notification | None:
        for nid in firing.enqueued:
            n = self.pending.get(nid)
            if n and n.action == "trigger" and n.attempts == 0 and not n.in_flight:
                return n
        return None

    def _new(self, firing: Firing, action: str, now: int, due_ns: int = 0, **kw) -> Notification:
        n = Notification(
            notification_id=f"ntf-{uuid.uuid4().hex[:16]}",
            route=firing.route,
            receiver=firing.receiver,
            action=action,
            incident=firing.incident,
            created_ns=now,
            next_attempt_ns=due_ns or now,
            **kw,
        )
        if action == "trigger":
            firing.paged = True
            firing.last_trigger_ns = now
        firing.enqueued.append(n.notification_id)
        self.pending[n.notification_id] = n
        return n

    async def enqueue_test(self, route_name: str, note: str = "") -> list[Notification]:
        """A test page through ``route_name``'s receiver: a trigger, then its resolve."""
        route = self.routes[route_name]
        now = self.clock()
        incident = incident_for_test_page(now)
        firing = Firing(route.name, route.receiver, incident)
        async with self._lock:
            new = [
                self._new(firing, "trigger", now, reason="test", note=note),
                self._new(firing, "resolve", now + 1, reason="test", note=note),
            ]
            await self._write(new)
        self._wake.set()
        return new

    # --- the dispatcher ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._repeat_and_unsilence()
                due = self._due(self.clock())
                if due:
                    await asyncio.gather(*(self._send(n) for n in due))
                    continue
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._sleep_s())
                except TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("paging dispatcher failed; trying again")
                await asyncio.sleep(1.0)

    def _sleep_s(self) -> float:
        now = self.clock()
        waits = [(n.next_attempt_ns - now) / 1e9 for n in self.pending.values() if not n.in_flight]
        return max(0.01, min([self.tick_s, *waits]))

    def _due(self, now: int) -> list[Notification]:
        """Due notifications, each the oldest pending one of its (route, receiver, incident)."""
        heads: dict[tuple, Notification] = {}
        for n in sorted(self.pending.values(), key=lambda n: (n.created_ns, n.notification_id)):
            heads.setdefault(n.key, n)
        return [n for n in heads.values() if not n.in_flight and n.next_attempt_ns <= now]

    async def _repeat_and_unsilence(self) -> None:
        now = self.clock()
        if now - self._silences_loaded_ns > 15e9:
            await self.load_silences()
        busy = {n.key for n in self.pending.values()}
        new, events = [], []
        for key, firing in self.firing.items():
            if key in busy:
                continue
            if not firing.paged:
                if not firing.acknowledged:  # e.g. its silence ended while it still fires
                    self._trigger_unless_silenced(
                        firing, labels_of(firing.incident), now, new, events
                    )
                continue
            interval = self._repeat_interval_s(firing)
            if interval is not None and now - firing.last_trigger_ns >= interval * 1e9:
                new.append(self._new(firing, "trigger", now, reason="repeat"))
        if new or events:
            async with self._lock:
                await self._write(new)
                await self._events(events)

    def _repeat_interval_s(self, firing: Firing) -> float | None:
        route = self.routes.get(firing.route)
        receiver = self.receivers.get(firing.receiver)
        intervals = []
        if route is not None and not firing.acknowledged:
            intervals.append(route.repeat_interval_s)
        if receiver is not None and receiver.type == "alertmanager":
            intervals.append(receiver.resend_interval_s)
        return min(intervals) if intervals else None

    async def _send(self, n: Notification) -> None:
        notifier = self.notifiers.get(n.receiver)
        n.in_flight = True
        try:
            if notifier is None:
                outcome = ("failed", f"receiver {n.receiver!r} is no longer configured", None)
            else:
                page = Page(
                    n.action, n.incident, n.route, n.note, n.reason == "test", n.notification_id
                )
                request = notifier.request(page)
                if request is None:
                    outcome = ("skipped", f"{n.action} is not in this receiver's API", None)
                else:
                    accepted = getattr(notifier, "accepted", None)
                    if accepted is None:
                        delivery = await deliver(self._session, request)
                    else:
                        delivery = await deliver(self._session, request, accepted)
                    if delivery.ok:
                        outcome = ("sent", "", None)
                    elif delivery.retry:
                        outcome = ("pending", delivery.error, delivery.retry_after_s)
                    else:
                        outcome = ("failed", delivery.error, None)
        finally:
            n.in_flight = False
        await self._settle(n, *outcome)

    async def _settle(self, n: Notification, status: str, error: str, after_s) -> None:
        now = self.clock()
        n.attempts += 1
        n.last_error = error
        if status == "pending":
            if now - n.created_ns > self.config.give_up_after_s * 1e9:
                status, n.last_error = "failed", f"gave up after {n.attempts} attempts: {error}"
            else:
                n.next_attempt_ns = now + int(self._backoff_s(n.attempts, after_s) * 1e9)
                log.warning(
                    "page %s to %s not accepted (attempt %d, next in %.1fs): %s",
                    n.action, n.receiver, n.attempts, (n.next_attempt_ns - now) / 1e9, error,
                )  # fmt: skip
        n.status = status
        outcome = "retry" if status == "pending" else status
        self.collector.metrics.page_attempts.labels(n.receiver, n.action, outcome).inc()
        if status == "sent":
            n.sent_ns = now
        elif status == "failed":
            log.error("page %s to %s failed for good: %s", n.action, n.receiver, n.last_error)
        async with self._lock:
            if status != "pending":
                self.pending.pop(n.notification_id, None)
            self.collector.metrics.pages_pending.set(len(self.pending))
            await self._write([n])
            if n.reason != "test" and status in ("sent", "failed"):
                event = _EVENT[n.action] if status == "sent" else "page_failed"
                detail = n.action if status == "sent" else f"{n.action}: {n.last_error}"
                if n.reason != "repeat" or status == "failed":
                    await self._events([self._event(n.incident, event, n, detail)])

    def _backoff_s(self, attempts: int, retry_after_s: float | None) -> float:
        backoff = Backoff(self.config.retry_initial_s, self.config.retry_max_s)
        return min(backoff.delay_s(attempts, retry_after_s), self.config.give_up_after_s)

    # --- store ------------------------------------------------------------------------------------

    def _next_version(self) -> int:
        self._version = max(self._version + 1, self.clock())
        return self._version

    async def _write(self, notifications: list[Notification]) -> None:
        if not notifications:
            return
        rows = []
        for n in notifications:
            n.version = self._next_version()
            receiver = self.receivers.get(n.receiver)
            rows.append(
                {
                    "notification_id": n.notification_id,
                    "version": n.version,
                    "created_at": utc_text(n.created_ns),
                    "route": n.route,
                    "receiver": n.receiver,
                    "receiver_type": receiver.type if receiver else "",
                    "action": n.action,
                    "reason": n.reason,
                    "incident_id": n.incident["incident_id"],
                    "fingerprint": n.incident.get("fingerprint", ""),
                    "severity": n.incident.get("severity", ""),
                    "incident": orjson.dumps(n.incident).decode(),
                    "note": n.note,
                    "status": n.status,
                    "attempts": n.attempts,
                    "next_attempt_at": utc_text(n.next_attempt_ns),
                    "sent_at": utc_text(n.sent_ns),
                    "last_error": n.last_error,
                }
            )
        c = self.collector
        await c.run_store(insert_rows, c.store, "page_outbox", rows)

    def _event(self, incident: dict, event: str, who, detail: str) -> dict:
        return {
            "incident_id": incident["incident_id"],
            "fingerprint": incident.get("fingerprint", ""),
            "at": utc_text(self.clock()),
            "event": event,
            "actor": f"{who.route}/{who.receiver}",
            "detail": detail,
        }

    async def _events(self, events: list[dict]) -> None:
        c = self.collector
        await c.run_store(insert_rows, c.store, "incident_events", events)


@dataclass
class _Rows:
    incidents: list[dict]
    events: list[dict]


def _ids(row: dict) -> dict:
    return {"incident_id": row["incident_id"], "fingerprint": row["fingerprint"]}


def _pairs(rows) -> list[tuple[dict, dict]]:
    """(event, incident row) pairs: the manager appends one row per event, in the same order."""
    if len(rows.incidents) == len(rows.events):
        return list(zip(rows.events, rows.incidents, strict=True))
    newest: dict[str, dict] = {}
    for row in rows.incidents:
        if (
            row["incident_id"] not in newest
            or row["version"] >= newest[row["incident_id"]]["version"]
        ):
            newest[row["incident_id"]] = row
    return [(e, newest[e["incident_id"]]) for e in rows.events if e["incident_id"] in newest]


def silence_from_row(row: dict) -> Silence:
    return Silence(
        row["silence_id"],
        tuple(parse_matcher(m) for m in orjson.loads(row["matchers"])),
        int(row["starts_ns"]),
        int(row["ends_ns"]),
        row.get("created_by", ""),
        row.get("comment", ""),
    )


def incident_for_test_page(now_ns: int) -> dict:
    """The incident a test page carries: plainly a test, with every field a real one has."""
    stamp = utc_text(now_ns)
    return {
        "incident_id": f"test-{uuid.uuid4().hex[:12]}",
        "fingerprint": f"test-{uuid.uuid4().hex[:12]}",
        "version": now_ns,
        "detector": "test",
        "kind": "test_page",
        "class": "infrastructure",
        "severity": "SEV3",
        "status": "open",
        "title": "agentwatch test page (resolves itself)",
        "summary": "Sent by `agentwatch alerts test`: the route and the receiver work.",
        "tenant": "",
        "service": "agentwatch",
        "agent": "",
        "session_id": "",
        "user_id": "",
        "trace_id": "",
        "span_id": "",
        "evidence": "[]",
        "first_seen": stamp,
        "last_seen": stamp,
        "occurrences": 0,
        "sessions_affected": 0,
        "users_affected": 0,
        "link": "",
    }
