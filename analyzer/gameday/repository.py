"""The SQL of gamedays: the ``gamedays`` table, and the facts a drill's score is computed from
(``incident_events``, ``page_outbox``, ``regression_cases``), read by the drill's incident.

Values reach the SQL as query parameters; drill ids are checked (``DRILL_ID``) before use.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from analyzer.gameday.scenarios import SCENARIOS
from analyzer.gameday.score import STEP_NAMES
from analyzer.incidents.model import utc_text
from collector.store import insert_rows, query_rows

RunStore = Callable[..., Awaitable]
_SETTINGS = " SETTINGS output_format_json_quote_64bit_integers = 0"
_COLUMNS = """
    drill_id, tenant, scenario, service, agent, session_id, started_by,
    toUnixTimestamp64Nano(started_at) AS started_ns, toString(status) AS status, incident_id,
    toUnixTimestamp64Nano(contained_at) AS contained_ns, contained_state,
    incident_s, paged_s, acknowledged_s, contained_s, step_named_s, case_captured_s, resolved_s"""
#: the incident of a drill: a drill incident opened on one of its sessions, its scenario's
#: detector first (a cost spiral may open a token-ratio incident beside its own)
_INCIDENT = """
SELECT incident_id, detector, trace_id, session_id, user_id, toString(status) AS status
FROM incidents_current
WHERE drill AND tenant = {tenant:String} AND startsWith(session_id, {prefix:String})
ORDER BY detector != {detector:String}, first_seen, incident_id
LIMIT 1"""
_EVENTS = """
SELECT toString(event) AS event, toUnixTimestamp64Nano(min(at)) AS at_ns
FROM incident_events
WHERE incident_id = {id:String}
  AND event IN ('opened', 'acknowledged', 'step_named', 'resolved', 'contained')
GROUP BY event"""
_PAGED = """
SELECT toUnixTimestamp64Nano(min(sent_at)) AS at_ns, count() AS n
FROM page_outbox FINAL
WHERE incident_id = {id:String} AND status = 'sent' AND action = 'trigger'"""
_CASE = """
SELECT toUnixTimestamp64Nano(min(captured_at)) AS at_ns, count() AS n
FROM regression_cases
WHERE incident_id = {id:String}"""


#: the drills whose spans are honoured as drills (``collector.normalize.RunningDrills``): running
#: and started within ``max_age``, or ended less than ``grace`` ago (late spans); gameday drills
#: only (the kill-switch drill's rows send no spans)
_CLAIMABLE = """
SELECT tenant, drill_id, service
FROM gamedays FINAL
WHERE startsWith(drill_id, 'dr-')
  AND (status = 'running' AND started_at > now64(9) - toIntervalSecond({max_age:UInt32})
       OR status != 'running' AND version > {ended_after:UInt64})
LIMIT 100000"""


class GamedayRepository:
    def __init__(self, store, run_store: RunStore) -> None:
        self.store = store
        self.run_store = run_store

    async def save(self, drill: dict) -> None:
        """A new version of the drill's row (``drill``: as ``get`` returns it)."""
        row = {
            "drill_id": drill["drill_id"],
            "version": time.time_ns(),
            "tenant": drill["tenant"],
            "scenario": drill["scenario"],
            "service": drill["service"],
            "agent": drill["agent"],
            "session_id": drill["session_id"],
            "started_by": drill["started_by"],
            "started_at": utc_text(drill["started_ns"]),
            "status": drill["status"],
            "incident_id": drill.get("incident_id") or "",
            "contained_at": utc_text(drill["contained_ns"]) if drill.get("contained_ns") else None,
            "contained_state": drill.get("contained_state") or "",
        }
        for name in STEP_NAMES:
            row[f"{name}_s"] = drill.get(f"{name}_s")
        await self.run_store(insert_rows, self.store, "gamedays", [row])

    async def get(self, drill_id: str) -> dict | None:
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM gamedays FINAL WHERE drill_id = {{id:String}} LIMIT 1",
            {"id": drill_id},
        )
        return rows[0] if rows else None

    async def listed(self, limit: int = 50, tenant: str | None = None) -> list[dict]:
        """The newest drills first."""
        where = "WHERE tenant = {tenant:String}" if tenant is not None else ""
        return await self._query(
            f"SELECT {_COLUMNS} FROM gamedays FINAL {where}"
            " ORDER BY started_at DESC LIMIT {limit:UInt32}",
            {"tenant": tenant or "", "limit": str(int(limit))},
        )

    async def claimable(self, grace_s: float, max_age_s: float) -> list[tuple[str, str, str]]:
        """(tenant, drill id, service) of the drills a span may claim now."""
        rows = await self._query(
            _CLAIMABLE,
            {
                "max_age": str(int(max_age_s)),
                "ended_after": str(max(0, time.time_ns() - int(grace_s * 1e9))),
            },
        )
        return [(r["tenant"], r["drill_id"], r["service"]) for r in rows]

    async def earlier(self, drill: dict) -> list[dict]:
        """The finished drills of the same scenario, tenant and agent before this one, oldest
        first (what the report compares with)."""
        return await self._query(
            f"SELECT {_COLUMNS} FROM gamedays FINAL WHERE tenant = {{tenant:String}}"
            " AND scenario = {scenario:String} AND agent = {agent:String} AND status = 'done'"
            " AND started_at < fromUnixTimestamp64Nano({started:Int64}, 'UTC')"
            " AND drill_id != {id:String} ORDER BY started_at LIMIT 1000",
            {
                "tenant": drill["tenant"],
                "scenario": drill["scenario"],
                "agent": drill["agent"],
                "started": str(drill["started_ns"]),
                "id": drill["drill_id"],
            },
        )

    async def incident_of(self, drill: dict) -> dict | None:
        """The drill's incident (id, detector, trace, session, user, status), once it opened."""
        rows = await self._query(
            _INCIDENT,
            {
                "tenant": drill["tenant"],
                "prefix": drill["drill_id"] + "-",
                "detector": SCENARIOS.get(drill["scenario"], ""),
            },
        )
        return rows[0] if rows else None

    async def moments(self, incident_id: str) -> dict[str, int]:
        """When each step happened to the incident (ns): opened, acknowledged, step_named,
        resolved (its events), paged (the first page the outbox sent), case_captured."""
        params = {"id": incident_id}
        found = {r["event"]: int(r["at_ns"]) for r in await self._query(_EVENTS, params)}
        out = {
            "incident": found.get("opened"),
            "acknowledged": found.get("acknowledged"),
            "step_named": found.get("step_named"),
            "resolved": found.get("resolved"),
        }
        for name, sql in (("paged", _PAGED), ("case_captured", _CASE)):
            rows = await self._query(sql, params)
            if rows and int(rows[0]["n"]):
                out[name] = int(rows[0]["at_ns"])
        return {k: v for k, v in out.items() if v}

    async def _query(self, sql: str, params: dict | None = None) -> list[dict]:
        return await self.run_store(query_rows, self.store, sql + _SETTINGS, params)
