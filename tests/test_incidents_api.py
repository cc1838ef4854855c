"""Incidents for people: the HTTP API, the CLI, the SQL views and the README's on-call queries,
on incidents produced by a real OTel SDK exporter looping through a real collector."""

from __future__ import annotations

import getpass
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import run_collector
from tests.test_detect_e2e import run_agent, wait_for_incidents

README = Path(__file__).resolve().parents[1] / "README.md"


def loop_incident(collector, session: str = "loop-1", user: str = "u-1") -> dict:
    """A loop (six identical calls) -> its incident row in incidents_current."""
    run_agent(collector, session, user, [42] * 6)
    [incident] = wait_for_incidents(collector, f"detector = 'loop' AND session_id = '{session}'")
    return incident


def events(collector, incident_id: str) -> list[tuple[str, str, str]]:
    rows = collector.query(
        "SELECT event, actor, detail FROM incident_events WHERE incident_id = {id:String}"
        " ORDER BY at",
        {"id": incident_id},
    )
    return [(r["event"], r["actor"], r["detail"]) for r in rows]


def current(collector, incident_id: str) -> dict:
    [row] = collector.query(
        "SELECT * FROM incidents_current WHERE incident_id = {id:String}", {"id": incident_id}
    )
    return row


def agentwatch(*args: str, api_url: str, token: str | None = None):
    cmd = [sys.executable, "-m", "agentwatch.cli.main", *args, "--api-url", api_url]
    if token:
        cmd += ["--token", token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def readme_query(title: str) -> str:
    """The README's ```sql block that starts with ``-- {title}``."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)
    [block] = [b for b in blocks if b.startswith(f"-- {title}")]
    return block.strip().rstrip(";")


# --- HTTP API -----------------------------------------------------------------------------------


def test_list_show_acknowledge_and_resolve_over_the_api(collector):
    incident = loop_incident(collector)
    iid, url = incident["incident_id"], f"{collector.api_url}/v1/incidents"

    listed = requests.get(url, params={"status": "open", "detector": "loop", "limit": 50})
    assert listed.status_code == 200, listed.text
    [row] = listed.json()
    assert (row["incident_id"], row["severity"], row["status"]) == (iid, "SEV2", "open")
    why, flagged = row["evidence"][:2]  # decoded JSON: why it fired, then the flagged step
    assert (why["rule"], why["threshold"], why["observed"]) == ("repeated_call", 4, 4)
    assert "lookup_order called 4 times" in why["why"] and flagged["span_id"] == incident["span_id"]
    assert row["first_seen"].endswith("Z") and isinstance(row["occurrences"], int)
    assert requests.get(url, params={"severity": "SEV1"}).json() == []
    assert requests.get(url, params={"detector": "cost_runaway"}).json() == []
    assert requests.get(url, params={"status": "resolved"}).json() == []
    for bad in ({"status": "closed"}, {"severity": "P1"}, {"limit": "0"}, {"limit": "many"}):
        response = requests.get(url, params=bad)
        assert response.status_code == 400 and "error" in response.json(), bad

    shown = requests.get(f"{url}/{iid}").json()
    assert shown["session_id"] == "loop-1" and shown["span_id"] == incident["span_id"]
    assert [(e["event"], e["actor"]) for e in shown["timeline"]] == [("opened", "agentwatch")]

    acked = requests.post(f"{url}/{iid}/ack", json={"actor": "alice", "reason": "looking"})
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged"
    assert current(collector, iid)["status"] == "acknowledged"
    assert events(collector, iid)[-1] == ("acknowledged", "alice", "looking")
    assert [e["event"] for e in acked.json()["timeline"]] == ["opened", "acknowledged"]
    again = requests.post(f"{url}/{iid}/ack", json={"actor": "bob"})
    assert again.status_code == 409 and "already acknowledged" in again.json()["error"]
    assert [r["incident_id"] for r in requests.get(url, params={"status": "active"}).json()] == [
        iid
    ]

    resolved = requests.post(f"{url}/{iid}/resolve", json={"actor": "alice", "reason": "fixed"})
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["status"] == "resolved"
    assert current(collector, iid)["status"] == "resolved"
    assert events(collector, iid)[-1] == ("resolved", "alice", "fixed")
    assert all(i.incident_id != iid for i in collector.collector.analyzer.incidents.open.values())

    twice = requests.post(f"{url}/{iid}/resolve", json={"actor": "alice"})
    assert twice.status_code == 409 and "already resolved" in twice.json()["error"]
    late_ack = requests.post(f"{url}/{iid}/ack")
    assert late_ack.status_code == 409
    assert [e[0] for e in events(collector, iid)] == ["opened", "acknowledged", "resolved"]

    for method, path in (
        ("GET", "/inc-000000000000"),
        ("POST", "/inc-000000000000/ack"),
        ("POST", "/inc-000000000000/resolve"),
    ):
        response = requests.request(method, f"{url}{path}", json={})
        assert response.status_code == 404 and "no incident" in response.json()["error"]
    bad_body = requests.post(f"{url}/{iid}/ack", data=b"not json")
    assert bad_body.status_code == 400 and "JSON object" in bad_body.json()["error"]


def test_actor_defaults_to_api(collector):
    iid = loop_incident(collector)["incident_id"]
    assert requests.post(f"{collector.api_url}/v1/incidents/{iid}/ack").status_code == 200
    assert events(collector, iid)[-1] == ("acknowledged", "api", "")


def test_the_api_token_is_required_when_set(collector_factory):
    with collector_factory(api_token="s3cret") as collector:
        iid = loop_incident(collector)["incident_id"]
        url = f"{collector.api_url}/v1/incidents"
        auth = {"Authorization": "Bearer s3cret"}
        for method, path in (("GET", ""), ("GET", f"/{iid}"), ("POST", f"/{iid}/ack")):
            response = requests.request(method, url + path)
            assert response.status_code == 401 and "API token" in response.json()["error"]
        assert current(collector, iid)["status"] == "open"
        assert requests.get(url, headers=auth).json()[0]["incident_id"] == iid

        denied = agentwatch("incidents", "list", api_url=collector.api_url)
        assert denied.returncode != 0 and "401" in denied.stderr
        allowed = agentwatch("incidents", "ack", iid, api_url=collector.api_url, token="s3cret")
        assert allowed.returncode == 0, allowed.stderr
        assert current(collector, iid)["status"] == "acknowledged"


def test_ack_and_resolve_after_a_restart(tmp_path):
    """A restarted collector adopts the open incident (analyzer/restore.py); people act on it."""
    with run_collector(tmp_path / "data") as collector:
        iid = loop_incident(collector)["incident_id"]
    with run_collector(tmp_path / "data") as collector:
        adopted = collector.collector.analyzer.incidents.open.values()
        assert [i.incident_id for i in adopted] == [iid]
        url = f"{collector.api_url}/v1/incidents/{iid}"
        acked = requests.post(f"{url}/ack", json={"actor": "carol", "reason": "after restart"})
        assert acked.status_code == 200, acked.text
        assert acked.json()["status"] == "acknowledged"
        assert current(collector, iid)["status"] == "acknowledged"
        assert requests.post(f"{url}/ack").status_code == 409
        assert requests.post(f"{url}/resolve", json={"actor": "carol"}).status_code == 200
        assert requests.post(f"{url}/resolve").status_code == 409
        assert events(collector, iid) == [
            (
                "opened",
                "agentwatch",
                "support: lookup_order called 4+ times with the same arguments",
            ),
            ("acknowledged", "carol", "after restart"),
            ("resolved", "carol", ""),
        ]
        versions = collector.query(
            "SELECT status FROM incidents WHERE incident_id = {id:String} ORDER BY version",
            {"id": iid},
        )
        assert [v["status"] for v in versions] == ["open", "acknowledged", "resolved"]
        # the row kept every other column
        row = current(collector, iid)
        assert (row["session_id"], row["occurrences"], row["agent"]) == ("loop-1", 1, "support")


def test_detection_off_still_serves_incidents(collector_factory):
    with collector_factory(detect=False) as collector:
        assert requests.get(f"{collector.api_url}/v1/incidents").json() == []
        response = requests.post(f"{collector.api_url}/v1/incidents/inc-123/resolve")
        assert response.status_code == 404


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_list_show_ack_resolve(collector):
    incident = loop_incident(collector)
    iid, api = incident["incident_id"], collector.api_url

    table = agentwatch("incidents", "list", api_url=api)
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    for column in ("ID", "SEV", "CLASS", "DETECTOR/KIND", "AGENT", "TITLE", "OCC", "SESS"):
        assert column in header
    assert "LAST SEEN" in header
    for cell in (iid, "SEV2", "open", "semantic", "loop/repeated_call", "support", "lookup_order"):
        assert cell in line
    assert "ago)" in line

    as_json = agentwatch("incidents", "list", "--format", "json", "--detector", "loop", api_url=api)
    assert [r["incident_id"] for r in json.loads(as_json.stdout)] == [iid]
    none = agentwatch("incidents", "list", "--severity", "sev1", api_url=api)
    assert none.returncode == 0 and "no incidents" in none.stdout

    shown = agentwatch("incidents", "show", iid, api_url=api)
    assert shown.returncode == 0, shown.stderr
    assert incident["title"] in shown.stdout and incident["span_id"] in shown.stdout
    assert re.search(r"timeline:\n\s+\S+ \S+Z\s+opened\s+agentwatch", shown.stdout), shown.stdout

    acked = agentwatch("incidents", "ack", iid, "--reason", "on it", api_url=api)
    assert acked.returncode == 0, acked.stderr
    assert f"{iid} acknowledged by {getpass.getuser()}" in acked.stdout
    assert events(collector, iid)[-1] == ("acknowledged", getpass.getuser(), "on it")

    resolved = agentwatch("incidents", "resolve", iid, "--actor", "dave", api_url=api)
    assert resolved.returncode == 0, resolved.stderr
    assert current(collector, iid)["status"] == "resolved"
    assert events(collector, iid)[-1] == ("resolved", "dave", "")
    listed = agentwatch("incidents", "list", "--status", "resolved", api_url=api)
    assert iid in listed.stdout and "resolved" in listed.stdout
    assert "no incidents" in agentwatch("incidents", "list", api_url=api).stdout

    twice = agentwatch("incidents", "resolve", iid, api_url=api)
    assert twice.returncode != 0 and "409" in twice.stderr and "already resolved" in twice.stderr
    unknown = agentwatch("incidents", "show", "inc-000000000000", api_url=api)
    assert unknown.returncode != 0 and "404" in unknown.stderr


def test_false_alarms_over_the_api_and_the_cli_give_field_precision(collector):
    """People's verdicts, through the real API and the CLI, end up in ``detector_precision``."""
    api, url = collector.api_url, f"{collector.api_url}/v1/incidents"
    first = loop_incident(collector, "loop-1", "u-1")["incident_id"]
    for bad, error in (
        ({"false_alarm": "yes"}, "true or false"),
        ({"false_alarm": True, "reason": "x"}, "only a resolve"),
    ):
        path = "resolve" if bad["false_alarm"] == "yes" else "ack"
        response = requests.post(f"{url}/{first}/{path}", json=bad)
        assert response.status_code == 400 and error in response.json()["error"], response.text
    assert current(collector, first)["status"] == "open"

    response = requests.post(
        f"{url}/{first}/resolve",
        json={"actor": "alice", "reason": "a retry by design", "false_alarm": True},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["resolution"]) == ("resolved", "false_alarm")
    assert events(collector, first)[-1] == ("resolved", "alice", "false alarm: a retry by design")

    # the same loop again: new incidents (recurrences), resolved from the CLI
    second = loop_incident(collector, "loop-2", "u-2")["incident_id"]
    fixed = agentwatch("incidents", "resolve", second, "--actor", "bob", api_url=api)
    assert fixed.returncode == 0 and f"{second} resolved by bob" in fixed.stdout, fixed.stderr
    third = loop_incident(collector, "loop-3", "u-3")["incident_id"]
    noise = agentwatch("incidents", "resolve", third, "--false-alarm", "--actor", "carol",
                       api_url=api)  # fmt: skip
    assert noise.returncode == 0, noise.stderr
    assert f"{third} resolved as a false alarm by carol" in noise.stdout
    assert [current(collector, i)["resolution"] for i in (first, second, third)] == [
        "false_alarm", "fixed", "false_alarm",
    ]  # fmt: skip
    assert events(collector, third)[-1] == ("resolved", "carol", "false alarm")
    shown = agentwatch("incidents", "show", third, api_url=api)
    assert "resolution  false_alarm" in shown.stdout, shown.stderr
    assert re.search(r"why\s+lookup_order called 4 times", shown.stdout), shown.stdout
    false_alarms = collector.query(readme_query("false alarms"))
    assert [(r["incident_id"], r["rule"]) for r in false_alarms] == [
        (third, "repeated_call"), (first, "repeated_call"),
    ]  # fmt: skip
    assert all("(the rule fires at 4)" in r["why"] for r in false_alarms)

    [row] = collector.query("SELECT * FROM detector_precision")
    assert (row["detector"], row["kind"], row["tenant"]) == ("loop", "repeated_call", "default")
    assert (row["resolved_by_people"], row["false_alarms"], row["resolved_quietly"]) == (3, 2, 0)
    assert row["field_precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert requests.get(f"{url}/precision").json() == [row]

    table = agentwatch("incidents", "precision", api_url=api)
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert "PRECISION" in header and "FALSE ALARMS" in header
    assert line.split() == ["default", "loop/repeated_call", "3", "2", "33%", "0"]
    as_json = agentwatch("incidents", "precision", "--format", "json", api_url=api)
    assert json.loads(as_json.stdout) == [row]


# --- SQL views ----------------------------------------------------------------------------------


def test_views_open_recurrence_and_mttr(collector):
    first = loop_incident(collector, "loop-1", "u-1")
    iid = first["incident_id"]

    [open_row] = collector.query("SELECT * FROM open_incidents")
    assert (open_row["incident_id"], open_row["status"]) == (iid, "open")
    [recurrence] = collector.query("SELECT * FROM incident_recurrence")
    assert (recurrence["fingerprint"], recurrence["incidents"], recurrence["unresolved"]) == (
        first["fingerprint"],
        1,
        1,
    )
    assert recurrence["total_occurrences"] == first["occurrences"] == 1
    assert recurrence["latest_incident_id"] == iid and recurrence["worst_severity"] == "SEV2"
    assert collector.query("SELECT * FROM incident_mttr") == []

    response = requests.post(f"{collector.api_url}/v1/incidents/{iid}/resolve", json={})
    assert response.status_code == 200, response.text
    assert collector.query("SELECT * FROM open_incidents") == []
    [mttr] = collector.query("SELECT * FROM incident_mttr")
    assert (mttr["class"], mttr["severity"], mttr["resolved"], mttr["auto_resolved"]) == (
        "semantic",
        "SEV2",
        1,
        0,
    )
    assert 0 <= mttr["avg_minutes_to_resolve"] < 5 and 0 <= mttr["median_minutes_to_resolve"] < 5

    # the same loop again, in another session: a recurrence (same fingerprint, new incident)
    second = loop_incident(collector, "loop-2", "u-2")
    assert second["incident_id"] != iid and second["fingerprint"] == first["fingerprint"]
    [recurrence] = collector.query("SELECT * FROM incident_recurrence")
    assert (recurrence["incidents"], recurrence["unresolved"], recurrence["total_occurrences"]) == (
        2,
        1,
        2,
    )
    assert recurrence["latest_incident_id"] == second["incident_id"]
    assert recurrence["first_seen"] == first["first_seen"]
    assert recurrence["last_seen"] == second["last_seen"]
    assert [r["incident_id"] for r in collector.query("SELECT * FROM open_incidents")] == [
        second["incident_id"]
    ]


# --- README's queries ---------------------------------------------------------------------------


def test_readme_on_call_queries(collector):
    span_ids = run_agent(collector, "loop-1", "u-1", [42] * 6)
    [incident] = wait_for_incidents(collector, "detector = 'loop'")
    iid = incident["incident_id"]
    run_agent(collector, "loop-2", "u-2", [42] * 5)  # the same loop in another session
    run_agent(collector, "calm-1", "u-3", [1, 2, 3])  # same tool, other arguments: not in it
    run_agent(collector, "other-svc", "u-4", [42] * 2, service="billing-svc")  # other service
    collector.wait_for_rows("SELECT 1 FROM otel_traces WHERE SessionId != ''", 4)
    collector.wait_for_rows("SELECT 1 FROM otel_traces WHERE StepKind = 'tool'", 16)
    assert (
        wait_for_incidents(collector, "sessions_affected = 2")[0]["incident_id"] == iid
    )  # loop-2 is an occurrence of the same incident

    [blast] = collector.query(readme_query("blast radius"), {"id": iid, "window_minutes": "60"})
    assert (blast["sessions"], blast["users"], blast["traces"], blast["calls"]) == (2, 2, 2, 11)
    assert sorted(blast["some_sessions"]) == ["loop-1", "loop-2"]
    [nothing] = collector.query(
        readme_query("blast radius"), {"id": "nope", "window_minutes": "60"}
    )
    assert (nothing["sessions"], nothing["calls"], nothing["some_sessions"]) == (0, 0, [])

    running = collector.query(
        readme_query("still running"), {"id": iid, "window_minutes": "60", "active_minutes": "30"}
    )
    assert sorted(r["SessionId"] for r in running) == ["loop-1", "loop-2"]
    assert {r["user"] for r in running} == {"u-1", "u-2"}
    assert all(r["recent_spans"] >= 6 for r in running)  # the agent span and its tool calls
    idle = collector.query(
        readme_query("still running"), {"id": iid, "window_minutes": "60", "active_minutes": "0"}
    )
    assert idle == []

    calls = collector.query(readme_query("the last n tool calls"), {"id": iid, "n": "3"})
    assert [c["SpanId"] for c in calls] == span_ids[1:4]  # up to the fourth, the flagged one
    assert [c["flagged"] for c in calls] == [0, 0, 1]
    assert {c["ToolName"] for c in calls} == {"lookup_order"}
    assert calls[-1]["SpanId"] == incident["span_id"]


@pytest.mark.parametrize(
    "view", ["open_incidents", "incident_recurrence", "incident_mttr", "detector_precision"]
)
def test_views_exist_on_an_empty_store(collector, view):
    assert collector.query(f"SELECT * FROM {view}") == []


def test_views_and_api_through_a_clickhouse_server_store(collector_factory):
    """The server path (clickhouse-connect over HTTP): another collector's SQL endpoint plays the
    ClickHouse server, so migration 004 and the API's reads and writes go over the wire."""
    with collector_factory(sql_readonly=False) as upstream:
        tables = upstream.query(
            "SELECT name FROM system.tables WHERE database = 'default'"
            " ORDER BY engine LIKE '%View' DESC, name LIKE '%incident%' DESC"
        )  # views first (the incident views before incidents_current): they depend on the rest
        for row in tables:
            requests.post(upstream.sql_url, data=f"DROP TABLE {row['name']}").raise_for_status()
        with collector_factory(clickhouse_url=upstream.sql_url) as downstream:
            iid = loop_incident(downstream)["incident_id"]
            assert [r["incident_id"] for r in downstream.query("SELECT * FROM open_incidents")] == [
                iid
            ]
            url = f"{downstream.api_url}/v1/incidents/{iid}"
            assert requests.post(f"{url}/resolve", json={"actor": "eve"}).status_code == 200
            assert requests.get(url).json()["status"] == "resolved"
            [mttr] = downstream.query("SELECT * FROM incident_mttr")
            assert mttr["resolved"] == 1
            [recurrence] = downstream.query("SELECT * FROM incident_recurrence")
            assert recurrence["incidents"] == 1
            [blast] = downstream.query(
                readme_query("blast radius"), {"id": iid, "window_minutes": "5"}
            )
            assert (blast["sessions"], blast["calls"]) == (1, 6)
            _check_awkward_filters(downstream, _seed_awkward_agents(downstream))


def test_changes_with_detection_off_go_to_the_table(tmp_path):
    """An incident the analyzer does not hold: a new version row and an event, written directly."""
    with run_collector(tmp_path / "data") as collector:
        iid = loop_incident(collector)["incident_id"]
    with run_collector(tmp_path / "data", detect=False) as collector:
        url = f"{collector.api_url}/v1/incidents/{iid}"
        assert requests.post(f"{url}/ack", json={"actor": "dan"}).json()["status"] == "acknowledged"
        assert current(collector, iid)["status"] == "acknowledged"
        assert [e[0] for e in events(collector, iid)] == ["opened", "acknowledged"]


# --- filters take any text (issue 11, hole 9) -----------------------------------------------------

AWKWARD = ["a\\b", "a\\", "\\N", "a\tb", "a\nb", "it's", 'say "hi"', "ünï ✓ 日本", "a\\tb", "ab"]


def _seed_awkward_agents(collector) -> dict[str, str]:
    """One open incident per awkward agent name; agent -> incident_id."""
    from collector.store import insert_rows

    rows = [
        {"incident_id": f"inc-awk{n:02d}", "fingerprint": f"fp{n}", "version": 1,
         "detector": "loop", "kind": "loop", "class": "semantic", "severity": "SEV2",
         "status": "open", "tenant": "default", "service": f"svc {agent}", "agent": agent,
         "first_seen": "2030-01-01 00:00:00", "last_seen": "2030-01-01 00:00:00"}
        for n, agent in enumerate(AWKWARD)
    ]  # fmt: skip
    collector.call(
        collector.collector.run_store(insert_rows, collector.collector.store, "incidents", rows)
    )
    return {row["agent"]: row["incident_id"] for row in rows}


def _check_awkward_filters(collector, ids: dict[str, str]) -> None:
    url = f"{collector.api_url}/v1/incidents"
    for agent, iid in ids.items():
        for params in ({"agent": agent}, {"service": f"svc {agent}", "status": "active"}):
            response = requests.get(url, params=params, timeout=30)
            assert response.status_code == 200, (params, response.text)
            assert [(r["incident_id"], r["agent"]) for r in response.json()] == [(iid, agent)]


def test_filter_values_with_backslash_tab_newline_quotes_and_unicode(collector_factory):
    """A backslash or a tab in a filter gave HTTP 500 (and ``a\\b`` matched nothing): every text
    now reaches the SQL as it was sent."""
    with collector_factory(detect=False) as collector:
        _check_awkward_filters(collector, _seed_awkward_agents(collector))
