"""``/healthz``: does the store answer, said within ``HEALTH_TIMEOUT_S`` whatever the store does.

A liveness probe must not wait for a hung ClickHouse server, nor queue behind ingest or SQL
queries (a slow query would get a healthy collector restarted). So the probe runs on a thread of
its own (not the store thread that SQL and the API share, nor the insert threads), through the
store's ``ping`` (its own connection and timeout) when it has one, one probe at a time: a probe
stuck on a hung server is waited for again, never stacked. An insert whose last attempt failed
(the writer's ``store_problem``) is unhealthy too: the store may answer ``SELECT 1`` and still
refuse or lose inserts.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from collector.store import StoreError, StoreUnavailable

HEALTH_TIMEOUT_S = 2.0

_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
_probes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # collector -> probe in flight


async def check(collector, timeout_s: float = HEALTH_TIMEOUT_S) -> web.Response:
    """200 ``{"status": "ok", …}`` or 503 ``{"status": "unhealthy", "error": why}``."""
    store = collector.store
    writer = getattr(collector, "_writer", None)
    problem = getattr(writer, "store_problem", None)
    if problem is None:
        probe = _probes.get(collector)
        if probe is None or probe.done():
            loop = asyncio.get_running_loop()
            probe = _probes[collector] = loop.run_in_executor(_executor, _probe, store, timeout_s)
            probe.add_done_callback(_retrieved)  # its outcome may come after every check gave up
        try:
            await asyncio.wait_for(asyncio.shield(probe), timeout_s)
        except TimeoutError:
            problem = f"the store did not answer within {timeout_s:g} s"
        except (StoreError, StoreUnavailable) as exc:
            problem = str(exc)
    if problem:
        return web.json_response(
            {"status": "unhealthy", "store": store.description, "error": problem}, status=503
        )
    return web.json_response({"status": "ok", "store": store.description, "ports": collector.ports})


def _retrieved(probe: asyncio.Future) -> None:
    if not probe.cancelled():
        probe.exception()


def _probe(store, timeout_s: float) -> None:
    ping = getattr(store, "ping", None)
    if ping is not None:
        ping(timeout_s)
    else:  # the embedded store: in this process, behind its query lock
        store.query("SELECT 1", "TSV")
