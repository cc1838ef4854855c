"""``IncidentRepository`` on the real embedded ClickHouse: typed records round-trip, a change to an
incident only in the store reads and writes it through the lifecycle, listings keep their filters
and tenant scope."""

from __future__ import annotations

from dataclasses import replace

import pytest

from analyzer.incidents.lifecycle import IncidentManager
from analyzer.incidents.model import IncidentRows
from analyzer.incidents.repository import IncidentQuery, IncidentRepository
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import migrate
from tests.analyzer.test_lifecycle import T0, S, finding, stored_record


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("incidents"))
    migrate(store)

    async def run_store(fn, *args):
        return fn(*args)

    yield IncidentRepository(store, run_store)
    store.close()


async def test_records_round_trip_and_a_stored_incident_changes_through_the_lifecycle(repository):
    theirs = replace(stored_record(), first_seen_ns=T0 + 123_456_789)  # every nanosecond kept
    manager = IncidentManager()
    ours = manager.on_finding(finding("s1", "u1"), T0)
    await repository.write(manager.take_rows())
    await repository.write(IncidentRows([theirs], []))

    assert await repository.record(theirs.incident_id) == theirs
    assert await repository.record("inc-nothing") is None
    assert {r.incident_id for r in await repository.unresolved()} == {
        theirs.incident_id,
        ours.incident_id,
    }
    adopted = IncidentManager().adopt(await repository.record(ours.incident_id))
    assert (adopted.fingerprint, adopted.first_seen_ns, adopted.version) == (
        ours.fingerprint,
        ours.first_seen_ns,
        ours.version,
    )

    change = manager.set_status(
        theirs.incident_id,
        "resolved",
        "dan",
        T0 + 5 * S,
        "done",
        await repository.record(theirs.incident_id),
    )
    await repository.write(change.rows)
    assert await repository.record(theirs.incident_id) == change.record
    assert [r.incident_id for r in await repository.unresolved()] == [ours.incident_id]
    [event] = await repository.timeline(theirs.incident_id)
    assert (event["event"], event["actor"], event["detail"]) == ("resolved", "dan", "done")
    assert event["at"].endswith("Z")  # ISO, for people


async def test_listing_filters_and_tenant_scope(repository):
    rows = [
        replace(stored_record(), incident_id=f"inc-list{n}", tenant=tenant, agent=agent)
        for n, (tenant, agent) in enumerate([("t1", "a\\b"), ("t2", "a\\b"), ("t1", "it's")])
    ]
    await repository.write(IncidentRows(rows, []))

    async def ids(**query) -> list[str]:
        listed = await repository.listed(IncidentQuery(**query))
        return sorted(r["incident_id"] for r in listed if r["incident_id"].startswith("inc-list"))

    assert await ids() == ["inc-list0", "inc-list1", "inc-list2"]
    assert await ids(labels=(("agent", "a\\b"),)) == ["inc-list0", "inc-list1"]
    assert await ids(labels=(("agent", "a\\b"),), reader_tenant="t2") == ["inc-list1"]
    assert await ids(labels=(("tenant", "t2"),), reader_tenant="t1") == []
    assert await ids(statuses=("resolved",)) == []
    assert await ids(severity="SEV1", labels=(("agent", "it's"),)) == ["inc-list2"]
    [row] = await repository.listed(IncidentQuery(labels=(("agent", "it's"),)))
    assert row == await repository.current("inc-list2")
    assert isinstance(row["occurrences"], int) and row["first_seen"].endswith("Z")
    for bad in (
        IncidentQuery(statuses=("open') OR 1=1 --",)),
        IncidentQuery(labels=(("agent` = '' OR `x", "y"),)),
        IncidentQuery(limit=0),
        IncidentQuery(severity="SEV9"),
    ):
        with pytest.raises(ValueError):
            bad.sql()
