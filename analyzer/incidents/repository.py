"""The SQL of ``incidents`` and ``incident_events``: every read and write of them is here.

``IncidentRepository(store, run_store)`` runs each statement on the store's thread
(``run_store(fn, *args)``, as the collector gives it). Writers and readers elsewhere (the
analyzer, restore, the incidents API, containment) call it and carry no SQL of their own; the
tables and views are the user-facing contract (README, "The SQL contract") and are not changed
here.

Injection safety: values reach the SQL as query parameters (``{name:String}``), texts from people
hex-encoded (``text_param``); what is inlined is either a constant of this module (statuses) or
checked first (fingerprints are our own hex digests, limits are integers).

Store errors (``StoreError``, ``StoreUnavailable``) are raised to the caller, which decides what
they mean (an HTTP status, a retry at the next flush).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from analyzer.incidents.model import (
    SEVERITIES,
    STATUSES,
    IncidentEvent,
    IncidentRecord,
    IncidentRows,
)
from collector.store import insert_rows, query_rows

#: ``GET /v1/incidents?status=``: the statuses each filter means
STATUS_FILTERS = {
    "open": ("open",),
    "acknowledged": ("acknowledged",),
    "resolved": ("resolved",),
    "active": ("open", "acknowledged"),
    "all": STATUSES,
}
#: the text columns a listing can be filtered on (exact match), in the order the filters apply
LABELS = ("detector", "kind", "class", "service", "agent", "tenant")
MAX_LIMIT = 1000

# For people (the API): plain numbers for UInt64 and ISO timestamps, the same from chDB and from
# a ClickHouse server.
_FOR_PEOPLE = (
    " SETTINGS output_format_json_quote_64bit_integers = 0, date_time_output_format = 'iso'"
)
# For IncidentRecord.from_row: the DateTime64 columns as ClickHouse's plain text (utc_ns reads it).
_FOR_RECORDS = (
    " SETTINGS output_format_json_quote_64bit_integers = 0, date_time_output_format = 'simple'"
)
_RECORDS = "SELECT * EXCEPT (updated_at) FROM incidents FINAL WHERE "
_HEX = re.compile(r"[0-9a-f]{1,64}")
_SPREAD = """
SELECT fingerprint, uniqExactIf(session_id, session_id != '') AS sessions,
       uniqExactIf(user_id, user_id != '') AS users
FROM incident_events
WHERE fingerprint IN ({fingerprints})
  AND at >= now64(9) - toIntervalSecond({window:UInt32})
  AND event IN ('opened', 'updated', 'escalated')
GROUP BY fingerprint
"""

RunStore = Callable[..., Awaitable]


def text_param(name: str) -> str:
    """The SQL for query parameter ``name`` holding any text (its value: ``text_value(text)``).

    ClickHouse reads a parameter's value as an escaped TSV field: chDB is handed our values as
    they are, so a backslash, tab or newline gave HTTP 500 or matched another text, while
    clickhouse-connect escapes them for a server. Hex digits read the same on both paths.
    """
    return f"unhex({{{name}:String}})"


def text_value(text: str) -> str:
    return text.encode().hex()


@dataclass(frozen=True, slots=True)
class IncidentQuery:
    """Which current incidents to list (``GET /v1/incidents``), most recently seen first.

    ``labels`` are (column of ``LABELS``, exact text) pairs; ``reader_tenant`` is the tenant of a
    read token (its incidents only, whatever else is asked).

    >>> sql, params = IncidentQuery(("open",), "SEV1", (("agent", "a'b"),), "acme", 5).sql()
    >>> print(sql.replace(_FOR_PEOPLE, ""))  # doctest: +NORMALIZE_WHITESPACE
    SELECT * FROM incidents_current WHERE status IN ('open') AND severity = {severity:String}
    AND `agent` = unhex({agent:String}) AND tenant = {reader_tenant:String}
    ORDER BY last_seen DESC, incident_id LIMIT 5
    >>> params
    {'severity': 'SEV1', 'agent': '612762', 'reader_tenant': 'acme'}
    """

    statuses: tuple[str, ...] = STATUSES
    severity: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    reader_tenant: str | None = None
    limit: int = 50

    def sql(self) -> tuple[str, dict[str, str]]:
        # checked again here: statuses and the limit are inlined, label names quoted as columns
        if not self.statuses or not set(self.statuses) <= set(STATUSES):
            raise ValueError(f"statuses must be some of {STATUSES}, got {self.statuses!r}")
        if not (isinstance(self.limit, int) and 1 <= self.limit <= MAX_LIMIT):
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
        where = ["status IN (" + ", ".join(f"'{s}'" for s in self.statuses) + ")"]
        params: dict[str, str] = {}
        if self.severity is not None:
            if self.severity not in SEVERITIES:
                raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
            where.append("severity = {severity:String}")
            params["severity"] = self.severity
        for name, value in self.labels:
            if name not in LABELS:
                raise ValueError(f"incidents are filtered on {', '.join(LABELS)}, not {name!r}")
            where.append(f"`{name}` = {text_param(name)}")
            params[name] = text_value(value)
        if self.reader_tenant is not None:
            where.append("tenant = {reader_tenant:String}")
            params["reader_tenant"] = self.reader_tenant
        sql = (
            f"SELECT * FROM incidents_current WHERE {' AND '.join(where)}"
            f" ORDER BY last_seen DESC, incident_id LIMIT {self.limit}{_FOR_PEOPLE}"
        )
        return sql, params


class IncidentRepository:
    """``incidents`` and ``incident_events`` in the store."""

    def __init__(self, store, run_store: RunStore) -> None:
        self.store = store
        self.run_store = run_store

    # --- writes ---------------------------------------------------------------------------------

    async def write(self, rows: IncidentRows) -> None:
        """Incident versions, then their events (JSONEachRow), each in one INSERT."""
        await self._insert("incidents", [r.row() for r in rows.incidents])
        await self._insert("incident_events", [e.row() for e in rows.events])

    async def append_events(self, events: list[IncidentEvent]) -> None:
        """Events alone (containment's notes on its incidents)."""
        await self._insert("incident_events", [e.row() for e in events])

    # --- records (typed: for the lifecycle) -----------------------------------------------------

    async def record(self, incident_id: str) -> IncidentRecord | None:
        """The incident's newest version, or None when there is no such incident."""
        rows = await self._query(
            _RECORDS + "incident_id = {id:String} LIMIT 1" + _FOR_RECORDS, {"id": incident_id}
        )
        return IncidentRecord.from_row(rows[0]) if rows else None

    async def unresolved(self) -> list[IncidentRecord]:
        """Every incident open or acknowledged (a restarted collector adopts them)."""
        rows = await self._query(_RECORDS + "status != 'resolved'" + _FOR_RECORDS)
        return [IncidentRecord.from_row(row) for row in rows]

    async def with_status(self, status: str) -> list[IncidentRecord]:
        """Every incident whose current status is ``status`` (paging: the open ones at start)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        rows = await self._query(_RECORDS + f"status = '{status}'" + _FOR_RECORDS)
        return [IncidentRecord.from_row(row) for row in rows]

    async def resolved_among(self, incident_ids: list[str]) -> set[str]:
        """Those of ``incident_ids`` whose incident is resolved now."""
        if not incident_ids:
            return set()
        rows = await self._query(
            "SELECT incident_id FROM incidents_current WHERE status = 'resolved'"
            " AND has(JSONExtract({ids:String}, 'Array(String)'), incident_id)",
            {"ids": orjson.dumps(sorted(set(incident_ids))).decode()},
        )
        return {row["incident_id"] for row in rows}

    async def events_since(
        self, since_ns: int, kinds: tuple[str, ...]
    ) -> list[tuple[IncidentEvent, IncidentRecord]]:
        """Events of ``kinds`` at or after ``since_ns``, written by any collector, oldest first,
        each with its incident's newest version (the paging leader reads what the others saw)."""
        events = await self._query(
            "SELECT incident_id, fingerprint, toUnixTimestamp64Nano(at) AS at_ns, event, actor,"
            " detail"
            " FROM incident_events WHERE at >= fromUnixTimestamp64Nano({since:Int64}, 'UTC')"
            " AND has(JSONExtract({kinds:String}, 'Array(String)'), toString(event))"
            " ORDER BY at, incident_id, event" + _FOR_RECORDS,
            {"since": str(since_ns), "kinds": orjson.dumps(list(kinds)).decode()},
        )
        if not events:
            return []
        ids = sorted({row["incident_id"] for row in events})
        rows = await self._query(
            _RECORDS + "has(JSONExtract({ids:String}, 'Array(String)'), incident_id)"
            + _FOR_RECORDS,
            {"ids": orjson.dumps(ids).decode()},
        )  # fmt: skip
        records = {row["incident_id"]: IncidentRecord.from_row(row) for row in rows}
        return [
            (IncidentEvent.from_row({**row, "at": row["at_ns"]}), records[row["incident_id"]])
            for row in events
            if row["incident_id"] in records
        ]

    async def spread(self, fingerprints: list[str], window_s: int) -> dict[str, tuple[int, int]]:
        """fingerprint -> (sessions, users) its findings came from within the last ``window_s``
        seconds, by every collector writing to the store (``opened``/``updated``/``escalated``)."""
        # fingerprints are our own hex digests: inlined (an array parameter's text form differs
        # between chDB and clickhouse-connect), after checking that they are nothing else
        listed = ", ".join(f"'{fp}'" for fp in fingerprints if _HEX.fullmatch(fp))
        sql = _SPREAD.replace("{fingerprints}", listed or "''")
        rows = await self._query(sql, {"window": str(window_s)}, "JSONCompactEachRow")
        return {fp: (int(sessions), int(users)) for fp, sessions, users in rows}

    async def reported(
        self, fingerprints: list[str], sessions: list[tuple[str, str]]
    ) -> tuple[set[str], set[tuple[str, str, str]]]:
        """What the store already says about these findings (``analyzer.session_sweep``), in one
        query: the fingerprints with an incident open or acknowledged, and the (fingerprint,
        tenant, session) of every incident, resolved ones too, opened on one of ``sessions``
        ((tenant, session id) pairs), so a resolved problem is not reported again from the
        same session's old steps."""
        listed = ", ".join(f"'{fp}'" for fp in fingerprints if _HEX.fullmatch(fp))
        if not listed:
            return set(), set()
        # session ids are the exporter's text: hex-encoded JSON, read the same by chDB and a server
        rows = await self._query(
            "SELECT fingerprint, status, tenant, session_id FROM incidents_current"
            f" WHERE fingerprint IN ({listed}) AND (status != 'resolved' OR has(JSONExtract("
            f"{text_param('sessions')}, 'Array(Tuple(String, String))'), (tenant, session_id)))",
            {"sessions": text_value(orjson.dumps(sorted(set(sessions))).decode())},
            "JSONCompactEachRow",
        )
        active = {fp for fp, status, _, _ in rows if status != "resolved"}
        return active, {(fp, tenant, session) for fp, _, tenant, session in rows}

    # --- for people (the API: ISO timestamps, plain numbers) ------------------------------------

    async def listed(self, query: IncidentQuery) -> list[dict]:
        """Rows of ``incidents_current`` that ``query`` asks for."""
        sql, params = query.sql()
        return await self._query(sql, params)

    async def current(self, incident_id: str) -> dict | None:
        """The incident's row of ``incidents_current``, or None."""
        rows = await self._query(
            "SELECT * FROM incidents_current WHERE incident_id = {id:String} LIMIT 1" + _FOR_PEOPLE,
            {"id": incident_id},
        )
        return rows[0] if rows else None

    async def precision(self, reader_tenant: str | None = None) -> list[dict]:
        """Rows of ``detector_precision`` (a read token's tenant only): each detector's field
        precision from the incidents people resolved."""
        if reader_tenant is None:
            return await self._query("SELECT * FROM detector_precision" + _FOR_PEOPLE)
        return await self._query(
            "SELECT * FROM detector_precision WHERE tenant = {reader_tenant:String}" + _FOR_PEOPLE,
            {"reader_tenant": reader_tenant},
        )

    async def recurrences(
        self,
        since_ns: int,
        labels: tuple[tuple[str, str], ...] = (),
        reader_tenant: str | None = None,
        limit: int = MAX_LIMIT,
    ) -> list[dict]:
        """Incidents first seen at or after ``since_ns`` whose fingerprint had an earlier
        incident resolved before they fired (the release gate, ``GET /v1/incidents/recurrence``),
        oldest first, each with the latest such earlier incident.

        An earlier incident resolved as a ``false_alarm`` does not count: nothing was fixed, so
        its firing again is not a regression. ``fixed``, ``quiet`` (the timer) and ``''`` (before
        the resolution column) do. Drill incidents count neither way. ``labels`` filter the new
        incident (``LABELS``, exact text).
        """
        if not (isinstance(limit, int) and 1 <= limit <= MAX_LIMIT):
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
        # drills (schemas/021_drill.sql) rehearse a failure: never a recurrence, never a fix
        where = ["b.first_seen >= fromUnixTimestamp64Nano({since:Int64}, 'UTC')", "NOT b.drill"]
        params = {"since": str(int(since_ns))}
        for name, value in labels:
            if name not in LABELS:
                raise ValueError(f"incidents are filtered on {', '.join(LABELS)}, not {name!r}")
            where.append(f"b.`{name}` = {text_param(name)}")
            params[name] = text_value(value)
        if reader_tenant is not None:
            where.append("b.tenant = {reader_tenant:String}")
            params["reader_tenant"] = reader_tenant
        new = " AND ".join(where)
        sql = f"""
        WITH fixed AS (
            SELECT i.incident_id AS incident_id, i.fingerprint AS fingerprint,
                   i.resolution AS resolution, e.resolved_at AS resolved_at
            FROM incidents_current AS i
            INNER JOIN (SELECT incident_id, max(at) AS resolved_at FROM incident_events
                        WHERE event = 'resolved' GROUP BY incident_id) AS e
                ON e.incident_id = i.incident_id
            WHERE i.status = 'resolved' AND i.resolution != 'false_alarm' AND NOT i.drill
              AND i.fingerprint IN (SELECT b.fingerprint FROM incidents_current AS b
                                    WHERE {new})
        )
        SELECT b.incident_id AS incident_id, b.fingerprint AS fingerprint,
               b.detector AS detector, b.kind AS kind, b.class AS class,
               b.severity AS severity, b.status AS status, b.title AS title,
               b.tenant AS tenant, b.service AS service, b.agent AS agent,
               b.first_seen AS fired_again_at, b.link AS link,
               argMax(a.incident_id, a.resolved_at) AS resolved_incident_id,
               max(a.resolved_at) AS resolved_at,
               argMax(a.resolution, a.resolved_at) AS resolution
        FROM incidents_current AS b
        INNER JOIN fixed AS a ON a.fingerprint = b.fingerprint
        WHERE {new} AND a.incident_id != b.incident_id AND a.resolved_at < b.first_seen
        GROUP BY incident_id, fingerprint, detector, kind, class, severity, status, title,
                 tenant, service, agent, fired_again_at, link
        ORDER BY fired_again_at, incident_id
        LIMIT {limit}"""
        return await self._query(sql + _FOR_PEOPLE, params)

    async def timeline(self, incident_id: str) -> list[dict]:
        """The incident's events in order: ``at``, ``event``, ``actor``, ``detail``."""
        return await self._query(
            "SELECT at, event, actor, detail FROM incident_events WHERE incident_id = {id:String}"
            " ORDER BY at, event" + _FOR_PEOPLE,
            {"id": incident_id},
        )

    async def _query(self, sql: str, params: dict | None = None, fmt: str = "JSONEachRow"):
        return await self.run_store(query_rows, self.store, sql, params, fmt)

    async def _insert(self, table: str, rows: list[dict]) -> None:
        await self.run_store(insert_rows, self.store, table, rows)
