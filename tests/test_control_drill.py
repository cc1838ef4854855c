"""The kill-switch drill (issue 16, point 3) across collectors sharing one store.

Two ``agentwatch serve`` processes share a third one's SQL port as their ClickHouse
(``tests/test_several_collectors.py``): all three register (the third serves that store's data,
so it is a collector on it too), ``agentwatch control drill`` kills a canary
through one and times each collector's OFREP answer, lifts it, and records the drill. What an agent
would see is checked with the real OpenFeature client, as ``tests/test_control.py`` does.
"""

from __future__ import annotations

import re

import pytest
import requests
from openfeature import api as openfeature
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

from tests.test_cli import agentwatch
from tests.test_paging import eventually
from tests.test_several_collectors import (
    Serve,
    collector_settings,
    running,  # noqa: F401 (a fixture)
    store,  # noqa: F401 (a fixture)
)

SECONDS = r"\d+\.\d\d s"


def registered(serve: Serve) -> dict[str, str]:
    """The live collectors as ``serve`` lists them: pid -> api url."""
    rows = serve.api("GET", "/v1/collectors")["collectors"]
    return {row["collector_id"].split(":")[1]: row["api_url"] for row in rows}


def both_registered(running, store) -> tuple[Serve, Serve]:  # noqa: F811
    a = running(Serve, "collector-a", collector_settings(store))
    b = running(Serve, "collector-b", collector_settings(store))
    a.wait_ready(), b.wait_ready()
    # the store stands for ClickHouse, but it is an agentwatch collector on that store as well:
    # agents could be pointed at it, so it is listed (and drilled) too
    want = {str(s.process.pid): s.api_url for s in (store, a, b)}
    assert eventually(lambda: registered(a) == want and registered(b) == want, what="both listed")
    return a, b


def agent_enabled(serve: Serve, agent: str) -> bool:
    """What an agent's OpenFeature client is told, set up as the README says (fail closed)."""
    openfeature.set_provider(OFREPProvider(serve.api_url, timeout=0.5))
    try:
        context = EvaluationContext(agent, {"agent": agent})
        return openfeature.get_client().get_boolean_value("agent.enabled", False, context)
    finally:
        openfeature.shutdown()


def canary_of(stdout: str) -> str:
    return re.search(r"killed agent=(agentwatch-drill-[0-9a-f]{8}) ", stdout).group(1)


def row_of(stdout: str, serve: Serve) -> str:
    [line] = [line for line in stdout.splitlines() if f"{serve.api_url} " in line]
    return line


def gameday(store, agent: str) -> dict:  # noqa: F811
    [row] = store.query(
        "SELECT scenario, status, started_by, contained_s, contained_state FROM gamedays FINAL"
        f" WHERE agent = '{agent}'"
    )
    return row


def test_a_drill_times_every_collector_stopping_and_running_again(running, store):  # noqa: F811
    a, b = both_registered(running, store)

    out = agentwatch("control", "drill", "--actor", "ann", api_url=a.api_url)
    assert out.returncode == 0, out.stdout + out.stderr
    for serve in (a, b, store):  # stopped after …, running again after …
        assert re.search(rf"{serve.api_url}\s+{SECONDS}\s+{SECONDS}", row_of(out.stdout, serve))
    assert re.search(rf"max: stopped after {SECONDS}, running again after {SECONDS}", out.stdout)
    assert "fail-closed: yes" in out.stdout and "result: PASSED" in out.stdout

    # the control was lifted: the canary's agents run again on both, nothing stays in force
    canary = canary_of(out.stdout)
    assert agent_enabled(a, canary) is True and agent_enabled(b, canary) is True
    assert a.api("GET", "/v1/control")["controls"] == []
    audit = store.query(
        f"SELECT mode, actor FROM control_audit WHERE agent = '{canary}' ORDER BY at"
    )
    assert audit == [{"mode": "killed", "actor": "ann"}, {"mode": "enabled", "actor": "ann"}]
    # recorded with the gamedays, its containment time compared with theirs
    row = gameday(store, canary)
    assert (row["scenario"], row["status"], row["started_by"]) == ("kill_switch", "done", "ann")
    assert row["contained_state"] == "killed" and 0 <= row["contained_s"] < 60

    # a collector stopped cleanly leaves the list at once (no 30 s wait for its heartbeat)
    b.stop()
    assert registered(a) == {str(s.process.pid): s.api_url for s in (store, a)}


def test_a_collector_killed_before_its_heartbeat_lapses_fails_the_drill(running, store):  # noqa: F811
    a, b = both_registered(running, store)
    b.kill()  # SIGKILL: it never says it stopped; its heartbeat is still fresh

    out = agentwatch("control", "drill", "--timeout", "3", api_url=a.api_url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(rf"{a.api_url}\s+{SECONDS}\s+{SECONDS}", row_of(out.stdout, a))
    dead = row_of(out.stdout, b)
    assert "unreachable" in dead and "fail-closed agents of it stop" in dead
    assert "max: NOT every collector answered within 3 s" in out.stdout
    assert "fail-closed: yes" in out.stdout and "result: FAILED" in out.stdout

    canary = canary_of(out.stdout)
    assert agent_enabled(a, canary) is True  # lifted all the same
    assert agent_enabled(b, canary) is False  # an agent of the dead collector: fail closed
    row = gameday(store, canary)
    assert row["status"] == "failed" and row["contained_s"] is None


ADMIN, READ, INGEST = "admin-t", "acme-read", "acme-in"


def test_the_list_and_the_record_need_the_right_token(collector_factory):
    tenants = {"acme": {"read_token": READ, "ingest_token": INGEST}}
    with collector_factory(api_token=ADMIN, tenants=tenants) as collector:
        url = f"{collector.api_url}/v1/collectors"

        def get(token: str | None) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return requests.get(url, headers=headers, timeout=10)

        assert get(None).status_code == 401 and get(INGEST).status_code == 403
        listed = eventually(lambda: get(READ).json()["collectors"], what="this collector listed")
        assert [row["api_url"] for row in listed] == [collector.api_url]
        assert listed[0]["collector_id"] == collector.collector.collector_id

        record = f"{collector.api_url}/v1/control/drills"
        drill = {"drill_id": "killswitch-0", "started_at": 1.7e9, "actor": "ann", "agent": "c",
                 "scope": "agent=c", "timeout_s": 60, "max_stop_s": 0.5, "max_resume_s": 0.4,
                 "fail_closed": True, "passed": True}  # fmt: skip

        def post(body: dict, token: str = ADMIN) -> requests.Response:
            return requests.post(record, json=body, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip

        assert post(drill, READ).status_code == 403  # only who may flip controls records drills
        for field, bad in [("started_at", "yesterday"), ("max_stop_s", -1), ("passed", "yes"),
                           ("drill_id", 7), ("actor", "x" * 5000)]:  # fmt: skip
            refused = post({**drill, field: bad})
            assert refused.status_code == 400 and repr(field) in refused.json()["error"], field
        assert post(drill).status_code == 201
        [row] = collector.query("SELECT tenant, status, contained_s FROM gamedays FINAL")
        assert row == {"tenant": "default", "status": "done", "contained_s": 0.5}


@pytest.mark.parametrize("token", [None, READ])
def test_a_drill_needs_the_admin_token(collector_factory, token):
    tenants = {"acme": {"read_token": READ}}
    with collector_factory(api_token=ADMIN, tenants=tenants) as collector:
        out = agentwatch("control", "drill", api_url=collector.api_url, token=token)
        assert out.returncode == 1 and ("401" in out.stderr or "403" in out.stderr), out.stderr
        assert collector.query("SELECT 1 FROM control_audit") == []  # nothing was flipped


def test_on_one_collector_the_drill_checks_with_the_agents_token(collector_factory):
    tenants = {"acme": {"ingest_token": INGEST}}
    with collector_factory(api_token=ADMIN, tenants=tenants) as collector:
        out = agentwatch("control", "drill", "--agent-token", INGEST,
                         api_url=collector.api_url, token=ADMIN)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "1 live collector(s)" in out.stdout and "result: PASSED" in out.stdout
        assert re.search(rf"{collector.api_url}\s+{SECONDS}\s+{SECONDS}", out.stdout)
