"""Leases in ClickHouse: one collector at a time does a job that must not run twice (paging,
migrations, the session sweep), and another takes over when it stops renewing.

ClickHouse has no compare-and-set, but it has insert deduplication: two INSERTs carrying the same
``insert_deduplication_token`` keep only the first that arrives (a plain MergeTree remembers the
last ``non_replicated_deduplication_window`` tokens; a replicated one uses Keeper, so it holds
across a cluster). A lease is a sequence of *terms*; claiming term ``k`` is an INSERT with the
token ``lease:<name>:<k>``, so whoever claims a term first owns it and every contender reads back
the same owner. The owner renews by inserting rows of its term; when it stops (dies, hangs, loses
the store) for ``ttl_s``, any other collector claims the next term. Time is the ClickHouse
server's (``now64``), so the collectors' clocks do not matter.

What it does not give: fencing. An owner that freezes past ``ttl_s`` and wakes may act once more
before it sees it lost the lease; ``held()`` answers from the owner's own clock with a margin, so
callers check it right before acting, which keeps that window to a freeze in between.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from collector.store import Store, insert_rows, insert_target, query_rows

log = logging.getLogger("agentwatch.lease")

LEASES_TABLE = """
CREATE TABLE IF NOT EXISTS leases
(
    name LowCardinality(String),
    term UInt64,
    holder String,
    kind LowCardinality(String),
    at DateTime64(9, 'UTC') DEFAULT now64(9)
)
ENGINE = MergeTree
ORDER BY (name, term, at)
TTL toDateTime(at) + INTERVAL 7 DAY
SETTINGS non_replicated_deduplication_window = 1000
"""

_STATE = """
SELECT term, holder, kind, toUnixTimestamp64Nano(at) AS at_ns,
       toUnixTimestamp64Nano(now64(9)) AS now_ns
FROM leases
WHERE name = {name:String}
  AND term = (SELECT max(term) FROM leases WHERE name = {name:String})
ORDER BY at
SETTINGS output_format_json_quote_64bit_integers = 0
"""


def collector_id() -> str:
    """This process's name in leases: host, pid and a random part (a restarted collector is a new
    holder, so it waits for its old lease to lapse or be released like anyone else)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LeaseState:
    term: int  # 0: never claimed
    holder: str  # the term's owner ('' when never claimed)
    last_ns: int  # the owner's latest claim or renewal (server time)
    released: bool
    now_ns: int  # the server's clock when read

    def live(self, ttl_s: float) -> bool:
        return bool(self.holder) and not self.released and self.now_ns - self.last_ns < ttl_s * 1e9


def read_state(store: Store, name: str) -> LeaseState:
    rows = query_rows(store, _STATE, {"name": name})
    if not rows:
        now = query_rows(store, "SELECT toUnixTimestamp64Nano(now64(9)) AS n SETTINGS"
                         " output_format_json_quote_64bit_integers = 0")[0]["n"]  # fmt: skip
        return LeaseState(0, "", 0, False, int(now))
    claim = next((r for r in rows if r["kind"] == "claim"), rows[0])
    owner = claim["holder"]
    mine = [r for r in rows if r["holder"] == owner]
    return LeaseState(
        term=int(claim["term"]),
        holder=owner,
        last_ns=max(int(r["at_ns"]) for r in mine if r["kind"] != "release"),
        released=any(r["kind"] == "release" for r in mine),
        now_ns=int(rows[0]["now_ns"]),
    )


class Lease:
    """One named lease as seen by one holder. Blocking (store calls): run it on the store thread.

    ``acquire()`` both takes a free or lapsed lease and renews a held one; call it every
    ``ttl_s / 3`` or so. ``held()`` says, without a store call, whether this holder may act now.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        holder: str,
        ttl_s: float = 15.0,
        margin_s: float = 2.0,
        sync_replica: bool = False,
    ) -> None:
        """``sync_replica``: on a cluster, the local replica of ``leases`` catches up (``SYSTEM SYNC
        REPLICA … LIGHTWEIGHT``) before each read, so a lagging replica cannot show a live lease
        as lapsed."""
        if ttl_s <= margin_s:
            raise ValueError(f"lease ttl_s ({ttl_s}) must exceed its margin ({margin_s})")
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.sync_replica = sync_replica
        self.term = 0
        self._valid_until = 0.0  # time.monotonic() until which held() is True

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def acquire(self) -> bool:
        """Renew the lease if this holder has it, take it if it is free or lapsed. True if held."""
        started = time.monotonic()
        state = self._read()
        if state.holder == self.holder and state.live(self.ttl_s) and state.term == self.term:
            self._insert(state.term, "renew", uuid.uuid4().hex)
        elif state.live(self.ttl_s):
            self._lost()
            return False
        else:
            term = state.term + 1
            self._insert(term, "claim", f"lease:{self.name}:{term}")
            state = self._read()
            if state.holder != self.holder or state.term != term:
                self._lost()
                return False
            if self.term != term:
                log.info("lease %s: term %d taken by %s", self.name, term, self.holder)
            self.term = term
        # counted from before the read: the server's clock started the ttl no earlier than that
        self._valid_until = started + self.ttl_s - self.margin_s
        return True

    def release(self) -> None:
        """Give the lease up now (a clean stop), so another holder need not wait for ``ttl_s``."""
        if self.term and self.held():
            self._valid_until = 0.0
            self._insert(self.term, "release", uuid.uuid4().hex)

    def _read(self) -> LeaseState:
        if self.sync_replica:
            self.store.command("SYSTEM SYNC REPLICA leases LIGHTWEIGHT")
        return read_state(self.store, self.name)

    def _lost(self) -> None:
        if self._valid_until:
            log.warning("lease %s: no longer held by %s", self.name, self.holder)
        self._valid_until = 0.0

    def _insert(self, term: int, kind: str, token: str) -> None:
        target = insert_target("leases", {"insert_deduplication_token": token})
        insert_rows(self.store, target, [{"name": self.name, "term": term, "holder": self.holder,
                                          "kind": kind}])  # fmt: skip


async def keep(lease: Lease, run_store) -> None:
    """Hold ``lease`` whenever it is free for as long as this task runs: take or renew it every
    ``ttl_s / 3`` (``run_store`` runs the store calls on the store's thread); ``lease.held()``
    says whether this collector has it now. Cancelled, it releases the lease."""
    try:
        while True:
            try:
                await run_store(lease.acquire)
            except Exception as exc:  # the store is down: held() lapses by itself
                log.warning("lease %s not renewed (%s)", lease.name, exc)
            await asyncio.sleep(lease.ttl_s / 3)
    except asyncio.CancelledError:
        try:
            await run_store(lease.release)
        except Exception:
            pass  # it lapses after ttl_s
        raise
