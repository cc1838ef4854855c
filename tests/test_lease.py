"""Leases in ClickHouse (collector/store/lease.py): one holder at a time, handed over when it stops.

The contended claim runs through a collector's ClickHouse-compatible SQL port with writes on, so
each contender is a real, independent clickhouse-connect client over HTTP, as collectors sharing a
ClickHouse server are.
"""

from __future__ import annotations

import threading
import time

from collector.store.clickhouse import ClickHouseStore
from collector.store.lease import LEASES_TABLE, Lease, read_state


def test_one_of_many_contenders_takes_a_free_lease_and_all_agree_who(collector_factory):
    with collector_factory(sql_readonly=False, detect=False) as upstream:
        stores = [ClickHouseStore(upstream.sql_url) for _ in range(6)]
        stores[0].command(LEASES_TABLE)
        leases = [Lease(store, "race", f"holder-{n}", ttl_s=30) for n, store in enumerate(stores)]
        won: dict[str, bool] = {}
        start = threading.Barrier(len(leases))

        def contend(lease: Lease) -> None:
            start.wait()
            won[lease.holder] = lease.acquire()

        threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        winners = [holder for holder, took in won.items() if took]
        assert len(winners) == 1, won
        state = read_state(stores[1], "race")
        assert (state.term, state.holder) == (1, winners[0])
        assert [lease.held() for lease in leases].count(True) == 1
        for store in stores:
            store.close()


def test_a_lapsed_lease_is_taken_over_and_a_released_one_at_once(collector):
    store = collector.collector.store
    ran = collector.call
    a = Lease(store, "job", "a", ttl_s=3.0, margin_s=1.0)
    b = Lease(store, "job", "b", ttl_s=3.0, margin_s=1.0)

    def acquire(lease):
        async def on_store_thread():
            return await collector.collector.run_store(lease.acquire)

        return ran(on_store_thread())

    assert acquire(a) and a.held()
    assert not acquire(b) and not b.held()  # a renews in time: b waits
    assert acquire(a)
    time.sleep(3.2)  # a stops renewing (hung, dead)
    assert acquire(b) and b.held()
    assert not acquire(a) and not a.held()  # a wakes up: it has lost the lease, and knows it

    async def release():
        await collector.collector.run_store(b.release)

    ran(release())
    assert not b.held()
    assert acquire(a)  # no wait for the ttl after a clean release
    assert read_state_terms(collector) == [1, 2, 3]


def read_state_terms(collector) -> list[int]:
    rows = collector.query("SELECT DISTINCT term FROM leases WHERE name = 'job' ORDER BY term")
    return [int(row["term"]) for row in rows]
