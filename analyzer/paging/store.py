"""Paging's store port and its SQL: every statement on ``page_outbox`` and ``silences`` is in this
file; what paging reads of incidents and writes to their timeline goes through
``analyzer.incidents.repository``, the one home of that SQL.

``PagingStore`` is what the pager needs of a store, as async functions; ``PagingSql`` implements it
over the collector's store (``collector.store``: chDB or a ClickHouse server) and also answers the
HTTP API's outbox and silence requests (``agentwatch/api/paging.py``), which work whether or not
this collector pages. Both tables keep one row per version (ReplacingMergeTree): read with FINAL.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import orjson

from analyzer.incidents.model import IncidentEvent, IncidentRecord, utc_text
from analyzer.incidents.repository import IncidentRepository
from analyzer.paging.model import Firing, Notification
from collector.store import insert_rows, query_rows

_INT_OUT = " SETTINGS output_format_json_quote_64bit_integers = 0"
_API_OUT = " SETTINGS output_format_json_quote_64bit_integers = 0, date_time_output_format = 'iso'"
OUTBOX_STATUSES = ("pending", "failed", "sent", "skipped", "superseded", "folded")
SILENCE_STATES = {"active": "ends_at > now64(9)", "expired": "ends_at <= now64(9)", "all": "1"}


class PagingStore(Protocol):
    """What the pager reads and writes, durably."""

    async def pending(self) -> list[Notification]:
        """Pending notifications, oldest first."""

    async def firing(self) -> list[tuple[Firing, str]]:
        """(route, receiver, incident)s the outbox has triggered (or folded) and not resolved,
        each with the incident whose page it was folded into ('' for its own page)."""

    async def resolved(self, incident_ids: Iterable[str]) -> set[str]:
        """Those of ``incident_ids`` whose incident is resolved now."""

    async def open_incidents(self) -> list[IncidentRecord]: ...

    async def silence_rows(self, now_ns: int) -> list[dict]:
        """Silences not ended at ``now_ns`` (``starts_ns``/``ends_ns`` as integers)."""

    async def write(self, notifications: list[Notification]) -> None:
        """A new version of each (its ``version`` is set here)."""

    async def append_events(self, events: list[IncidentEvent]) -> None: ...


RunStore = Callable[..., Awaitable]  # Collector.run_store: a blocking store call on its thread


class PagingSql:
    """``PagingStore`` over ``collector.store`` (``run`` runs a blocking call on the store thread)."""

    def __init__(self, run: RunStore, store, clock: Callable[[], int] = time.time_ns) -> None:
        self._run = run
        self._store = store
        self._clock = clock
        self._incidents = IncidentRepository(store, run)
        self._version = 0

    async def _query(self, sql: str, params: dict | None = None, out: str = _INT_OUT) -> list[dict]:
        return await self._run(query_rows, self._store, sql + out, params)

    async def _insert(self, table: str, rows: list[dict]) -> None:
        if rows:
            await self._run(insert_rows, self._store, table, rows)

    # --- the pager's port ---------------------------------------------------------------------

    async def pending(self) -> list[Notification]:
        cols = (
            "notification_id, route, receiver, receiver_type, action, reason, incident, note,"
            " page_of,"
            " status, attempts, last_error, version,"
            " toUnixTimestamp64Nano(created_at) AS created_ns,"
            " toUnixTimestamp64Nano(next_attempt_at) AS next_attempt_ns"
        )
        rows = await self._query(
            f"SELECT {cols} FROM page_outbox FINAL WHERE status = 'pending'"
            " ORDER BY created_at, notification_id"
        )
        found = []
        for row in rows:
            row["incident"] = IncidentRecord.from_row(orjson.loads(row["incident"]))
            found.append(Notification(**row))
            self._version = max(self._version, int(row["version"]))
        return found

    async def firing(self) -> list[tuple[Firing, str]]:
        rows = await self._query(
            "SELECT route, receiver, incident_id, argMax(action, created_at) AS last_action,"
            " argMax(incident, created_at) AS incident, argMax(page_of, created_at) AS page_of,"
            " toUnixTimestamp64Nano(maxIf(created_at, action = 'trigger')) AS last_trigger_ns,"
            " arrayMap(x -> x.2, arraySort(groupArray((created_at, notification_id)))) AS ids"
            " FROM page_outbox FINAL WHERE reason != 'test' AND status != 'superseded'"
            " GROUP BY route, receiver, incident_id HAVING last_action != 'resolve'"
        )
        return [
            (
                Firing(
                    row["route"],
                    row["receiver"],
                    IncidentRecord.from_row(orjson.loads(row["incident"])),
                    paged=True,
                    acknowledged=row["last_action"] == "acknowledge",
                    last_trigger_ns=int(row["last_trigger_ns"]),
                    enqueued=list(row["ids"]),
                ),
                row["page_of"],
            )
            for row in rows
        ]

    async def resolved(self, incident_ids: Iterable[str]) -> set[str]:
        return await self._incidents.resolved_among(list(incident_ids))

    async def open_incidents(self) -> list[IncidentRecord]:
        return await self._incidents.with_status("open")

    async def silence_rows(self, now_ns: int) -> list[dict]:
        return await self._query(
            "SELECT silence_id, matchers, created_by, comment,"
            " toUnixTimestamp64Nano(starts_at) AS starts_ns,"
            " toUnixTimestamp64Nano(ends_at) AS ends_ns FROM silences FINAL"
            " WHERE ends_at > fromUnixTimestamp64Nano({now:Int64}, 'UTC')",
            {"now": now_ns},
        )

    async def write(self, notifications: list[Notification]) -> None:
        for n in notifications:
            # versions only grow, also past a restart (pending() saw the newest one)
            self._version = n.version = max(self._version + 1, self._clock())
        await self._insert("page_outbox", [_outbox_row(n) for n in notifications])

    async def append_events(self, events: list[IncidentEvent]) -> None:
        await self._incidents.append_events(events)

    # --- the HTTP API's (agentwatch/api/paging.py) ---------------------------------------------

    async def outbox_rows(self, statuses: Iterable[str], limit: int) -> list[dict]:
        """Outbox rows in ``statuses``, newest first, without the incident and version."""
        wanted = [s for s in statuses if s in OUTBOX_STATUSES]
        return await self._query(
            "SELECT * EXCEPT (incident, updated_at, version) FROM page_outbox FINAL"
            " WHERE has(JSONExtract({statuses:String}, 'Array(String)'), status)"
            " ORDER BY created_at DESC LIMIT {limit:UInt32}",
            {"statuses": orjson.dumps(wanted).decode(), "limit": limit},
            _API_OUT,
        )

    async def silences(self, state: str) -> list[dict]:
        """Silences in ``state`` (a key of ``SILENCE_STATES``), newest first."""
        return await self._query(
            "SELECT silence_id, matchers, starts_at, ends_at, created_by, comment,"
            " ends_at > now64(9) AS active"
            f" FROM silences FINAL WHERE {SILENCE_STATES[state]} ORDER BY starts_at DESC",
            out=_API_OUT,
        )

    async def silence(self, silence_id: str) -> dict | None:
        """The silence's row as stored (``active``: not ended), or None."""
        rows = await self._query(
            "SELECT * EXCEPT (updated_at), ends_at > now64(9) AS active FROM silences FINAL"
            " WHERE silence_id = {id:String}",
            {"id": silence_id},
            _API_OUT,
        )
        return rows[0] if rows else None

    async def put_silence(self, row: dict) -> None:
        """A new version of a silence (``version``, ``starts_at``/``ends_at`` as store text)."""
        await self._insert("silences", [row])


def _outbox_row(n: Notification) -> dict:
    return {
        "notification_id": n.notification_id,
        "version": n.version,
        "created_at": utc_text(n.created_ns),
        "route": n.route,
        "receiver": n.receiver,
        "receiver_type": n.receiver_type,
        "action": n.action,
        "reason": n.reason,
        "incident_id": n.incident.incident_id,
        "fingerprint": n.incident.fingerprint,
        "page_of": n.page_of,
        "severity": n.severity,  # the page's: the worst of its incidents'
        "incident": orjson.dumps(n.incident.row()).decode(),
        "note": n.note,
        "status": n.status,
        "attempts": n.attempts,
        "next_attempt_at": utc_text(n.next_attempt_ns),
        "sent_at": utc_text(n.sent_ns),
        "last_error": n.last_error,
    }
