"""How incidents were resolved, in the real embedded ClickHouse: migration 012 adds the
``resolution`` column to a store that already holds incidents (their rows still read, as not
judged by anyone), and ``detector_precision`` turns people's verdicts into each detector's field
precision."""

from __future__ import annotations

import shutil
from dataclasses import replace

from analyzer.incidents.model import IncidentRows
from analyzer.incidents.repository import IncidentRepository
from collector.store import insert_rows
from collector.store.embedded import EmbeddedStore
from collector.store.migrations import SCHEMAS_DIR, migrate
from tests.analyzer.test_lifecycle import stored_record


async def test_old_rows_read_and_precision_counts_only_peoples_verdicts(tmp_path):
    before = tmp_path / "schemas-before-012"
    before.mkdir()
    for path in SCHEMAS_DIR.glob("0*.sql"):
        if int(path.name[:3]) < 12:
            shutil.copy(path, before)
    store = EmbeddedStore(tmp_path / "store")

    async def run_store(fn, *args):
        return fn(*args)

    repository = IncidentRepository(store, run_store)
    try:
        assert "012_incident_resolution" not in migrate(store, before)
        old = replace(stored_record("resolved"), incident_id="inc-old")
        row = old.row()
        del row["resolution"]  # written by a collector from before the column
        insert_rows(store, "incidents", [row])
        assert "012_incident_resolution" in migrate(store)

        read = await repository.record("inc-old")
        assert read == old and read.resolution == ""
        assert (await repository.current("inc-old"))["resolution"] == ""

        verdicts = [("inc-fixed", "fixed"), ("inc-noise", "false_alarm"), ("inc-quiet", "quiet")]
        verdicts += [("inc-noise2", "false_alarm"), ("inc-fixed2", "fixed")]
        records = [
            replace(stored_record("resolved"), incident_id=iid, resolution=resolution)
            for iid, resolution in verdicts
        ]
        records.append(replace(stored_record("open"), incident_id="inc-open"))
        other = replace(stored_record("resolved"), incident_id="inc-t2", tenant="t2",
                        kind="cycle", resolution="false_alarm")  # fmt: skip
        await repository.write(IncidentRows([*records, other], []))

        rows = await repository.precision()
        assert [(r["tenant"], r["detector"], r["kind"]) for r in rows] == [
            ("acme", "loop", "repeated_call"),
            ("t2", "loop", "cycle"),
        ]
        acme, t2 = rows
        assert (acme["resolved"], acme["resolved_by_people"], acme["false_alarms"]) == (6, 4, 2)
        assert (acme["resolved_quietly"], acme["field_precision"]) == (1, 0.5)
        assert (t2["resolved_by_people"], t2["false_alarms"], t2["field_precision"]) == (1, 1, 0)
        assert [r["tenant"] for r in await repository.precision("t2")] == ["t2"]
        assert await repository.precision("nobody") == []
    finally:
        store.close()


async def test_precision_is_null_until_a_person_resolves_one(tmp_path):
    store = EmbeddedStore(tmp_path / "store")

    async def run_store(fn, *args):
        return fn(*args)

    repository = IncidentRepository(store, run_store)
    try:
        migrate(store)
        assert await repository.precision() == []
        quiet = replace(stored_record("resolved"), incident_id="inc-q", resolution="quiet")
        await repository.write(IncidentRows([quiet], []))
        [row] = await repository.precision()
        assert (row["resolved_by_people"], row["field_precision"]) == (0, None)
    finally:
        store.close()
