"""Which collectors share this store: each one's heartbeat in the ``collectors`` table.

A containment control is written once and every collector on the store serves it within a
second; proving that (``agentwatch control drill``) needs the list of collectors an agent may be
talking to. There was none: each collector now inserts a row every ``HEARTBEAT_S`` with its id
and the API url others reach it at, and is *live* while its newest row says ``up`` and is at
most ``LIVE_S`` old. Times are the ClickHouse server's (``now64``), as for leases, so the
collectors' clocks do not matter. A clean stop writes ``stopped``; a crash just stops beating.

The drill's record (``record_drill``: a row of ``gamedays``) lives here too, in one function.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from collector.store import Store, insert_rows, query_rows

log = logging.getLogger("agentwatch.registry")

HEARTBEAT_S = 10.0
#: A collector that has not beaten for this long is not live (three missed heartbeats).
LIVE_S = 30.0

_LIVE = """
SELECT collector_id,
       argMax(api_url, at) AS api_url,
       argMax(version, at) AS version,
       toString(argMax(started_at, at)) AS started_at,
       toString(max(at)) AS last_seen,
       round(dateDiff('millisecond', max(at), now64(3)) / 1000, 1) AS age_s
FROM collectors
GROUP BY collector_id
HAVING argMax(state, at) = 'up' AND max(at) > now64(3) - toIntervalMillisecond({live_ms:UInt32})
ORDER BY collector_id
"""


def api_url_of(public_url: str, listen: str, api_port: int) -> str:
    """Where other machines reach this collector's API: ``public_url`` when set, else the listen
    address (a wildcard address names this machine, as the incident links do).

    >>> api_url_of("", "127.0.0.1", 8080), api_url_of("http://aw:8080", "0.0.0.0", 8080)
    ('http://127.0.0.1:8080', 'http://aw:8080')
    >>> api_url_of("", "::1", 9)
    'http://[::1]:9'
    """
    if public_url:
        return public_url.rstrip("/")
    host = listen if listen not in ("0.0.0.0", "::", "") else socket.getfqdn()
    return f"http://{f'[{host}]' if ':' in host else host}:{api_port}"


def live_collectors(store: Store, live_s: float = LIVE_S) -> list[dict]:
    """The collectors whose newest heartbeat says ``up`` and is at most ``live_s`` old; blocking."""
    return query_rows(store, _LIVE, {"live_ms": int(live_s * 1000)})


class Registry:
    """This collector's heartbeat. ``run_store(fn, *args)`` runs a blocking store call on the
    store's thread (``agentwatch.app.Collector.run_store``)."""

    def __init__(
        self,
        store: Store,
        run_store,
        collector_id: str,
        api_url: str,
        every_s: float = HEARTBEAT_S,
    ) -> None:
        self.store = store
        self.run_store = run_store
        self.row = {
            "collector_id": collector_id,
            "api_url": api_url,
            "version": _version(),
            "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        }
        self.every_s = every_s

    async def beat(self, state: str = "up") -> None:
        await self.run_store(insert_rows, self.store, "collectors", [{**self.row, "state": state}])

    async def beat_forever(self) -> None:
        """A heartbeat now, then every ``every_s``; a store that is down is retried next time."""
        while True:
            try:
                await self.beat()
            except Exception as exc:
                log.warning(
                    "collector heartbeat not stored (retried in %g s): %s", self.every_s, exc
                )
            await asyncio.sleep(self.every_s)

    async def leave(self) -> None:
        """A clean stop: not live from now on (best effort; a crash simply stops beating)."""
        try:
            await asyncio.wait_for(self.beat("stopped"), timeout=5)
        except Exception as exc:
            log.warning("could not mark this collector stopped in the registry: %s", exc)


def _version() -> str:
    try:
        return package_version("agentwatch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def record_drill(store: Store, drill: dict, tenant: str) -> None:
    """One kill-switch drill (``agentwatch control drill``) as a row of ``gamedays`` (schema 021),
    scenario ``kill_switch``; blocking.

    ``contained_s`` is the slowest collector's time to answer "stopped" (NULL when one never
    did), ``status`` is ``done`` when the drill passed, else ``failed``. ``gamedays`` has no
    column for each collector's time, the lift or the fail-closed check: the CLI prints them.
    """
    started_ns = int(drill["started_at"] * 1e9)
    stop_s = drill["max_stop_s"]
    row = {
        "drill_id": drill["drill_id"],
        "version": time.time_ns(),
        "tenant": tenant,
        "scenario": "kill_switch",
        "agent": drill["agent"],
        "started_by": drill["actor"],
        "started_at": _utc(started_ns),
        "status": "done" if drill["passed"] else "failed",
        "contained_at": None if stop_s is None else _utc(started_ns + int(stop_s * 1e9)),
        "contained_state": "" if stop_s is None else "killed",
        "contained_s": stop_s,
    }
    insert_rows(store, "gamedays", [row])
