"""The first hour with agentwatch, as a new user lives it (issue 14, points 2 and 9): the README's
queries paste and run, a page's link opens the incident, a taken port says which, the log says
what happened, and nothing stops a tool unless a policy says so."""

from __future__ import annotations

import html
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from agentwatch import app as collector_app
from collector import receivers as otlp_receivers
from collector.ratelog import RateLimitedLog
from tests.fake_pagers import FakeReceiver
from tests.test_cli import agentwatch
from tests.test_detect_e2e import run_agent, wait_for_incidents
from tests.test_paging import eventually, paging

README = Path(__file__).parents[1] / "README.md"


def readme_statements() -> list[str]:
    """Each statement of each ```sql block of the README, as a person would paste it."""
    blocks = re.findall(r"^[ \t]*```sql\n(.*?)^[ \t]*```", README.read_text(), re.M | re.S)
    statements = []
    for block in blocks:
        block = "\n".join(line.strip() for line in block.splitlines())
        statements += [
            s.strip() + ";" for s in re.split(r";[ \t]*$", block, flags=re.M) if s.strip()
        ]
    return statements


def params_for(statement: str, values: dict[str, str]) -> list[str]:
    names = sorted(set(re.findall(r"\{(\w+):\w+\}", statement)))
    missing = [n for n in names if n not in values]
    assert not missing, f"no test value for README parameter(s) {missing} in:\n{statement}"
    return [arg for n in names for arg in ("--param", f"{n}={values[n]}")]


def loop_incident(collector, session="loop-1", user="u-1", service="support-svc") -> dict:
    """A looping agent (6 identical calls through the OTel SDK) and its incident, via the API."""
    run_agent(collector, session, user, [42] * 6, service=service)
    wait_for_incidents(collector, f"session_id = '{session}'")
    [row] = [
        r
        for r in requests.get(f"{collector.api_url}/v1/incidents").json()
        if r["session_id"] == session
    ]
    return row


# --- point 9: the README's SQL, the tool column, the loop's title -----------------------------


def test_every_sql_block_of_the_readme_pastes_and_runs(collector):
    incident = loop_incident(collector)
    statements = readme_statements()
    assert len(statements) >= 8, statements  # the on-call queries, containment, paging
    values = {
        "s": "loop-1",
        "id": incident["incident_id"],
        "window_minutes": "60",
        "active_minutes": "60",
        "n": "5",
    }
    answers = {}
    for statement in statements:
        assert statement.startswith("--") or statement.startswith("SELECT"), statement
        ran = agentwatch(
            "sql", statement, *params_for(statement, values), "--format", "json",
            api_url=collector.api_url,
        )  # fmt: skip
        assert ran.returncode == 0, f"{statement}\n{ran.stderr}"
        answers[statement.splitlines()[0]] = ran.stdout
    # what the queries answer is this agent's loop
    [session_step_by_step] = [a for q, a in answers.items() if "step by step" in q]
    assert session_step_by_step.count('"lookup_order"') == 6
    [blast] = [a for q, a in answers.items() if q.startswith("-- blast radius")]
    assert '"sessions":1' in blast.replace(" ", "")


def test_sql_takes_a_query_starting_with_a_comment_as_an_argument_or_on_stdin(collector):
    query = "-- a comment first, as in the README\nSELECT 41 + 1 AS answer;"
    ran = agentwatch("sql", query, "--format", "json", api_url=collector.api_url)
    assert ran.returncode == 0, ran.stderr
    assert '"answer": 42' in ran.stdout or '"answer":42' in ran.stdout
    piped = subprocess.run(
        [sys.executable, "-m", "agentwatch.cli.main", "sql", "-", "--format", "csv",
         "--api-url", collector.api_url],
        input=query, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.splitlines() == ['"answer"', "42"], piped.stderr


def test_a_loop_of_six_calls_reads_true_in_its_incident_and_the_api_names_its_tool(collector):
    incident = loop_incident(collector)
    # reported at the 4th identical call; the title does not claim it stopped there
    assert incident["title"] == "support: lookup_order called 4+ times with the same arguments"
    assert incident["tool"] == "lookup_order"  # incidents_current.tool, through /v1/incidents
    assert incident["occurrences"] == 1  # one loop (one session), however long it went on
    why = incident["evidence"][0]
    assert (why["observed"], why["threshold"]) == (4, 4)
    assert why["why"].startswith("lookup_order called 4 times")  # the exact count when it fired
    shown = agentwatch("incidents", "show", incident["incident_id"], api_url=collector.api_url)
    assert "lookup_order called 4+ times" in shown.stdout, shown.stderr
    # and the trajectory holds every call the title's "+" stands for
    steps = collector.query(
        "SELECT count() AS n FROM agent_spans WHERE SessionId = 'loop-1' AND ToolName = 'lookup_order'"
    )
    assert steps == [{"n": "6"}] or steps == [{"n": 6}]


def test_incidents_list_shows_the_service_and_filters_on_it(collector):
    loop_incident(collector, "eu-1", "u-1", service="support-eu")
    loop_incident(collector, "us-1", "u-2", service="support-us")
    table = agentwatch("incidents", "list", api_url=collector.api_url)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert "SERVICE" in header.split() and "AGENT" in header.split()
    assert any("support-eu" in row for row in rows) and any("support-us" in row for row in rows)
    only_eu = agentwatch("incidents", "list", "--service", "support-eu", "--format", "json",
                         api_url=collector.api_url)  # fmt: skip
    assert only_eu.returncode == 0, only_eu.stderr
    assert '"support-eu"' in only_eu.stdout and '"support-us"' not in only_eu.stdout


def test_without_a_policy_file_no_tool_circuit_opens_by_itself(collector):
    for n in range(3):  # the breaker's default count under a policy file: 3 sessions
        run_agent(collector, f"loop-{n}", f"u-{n}", [42] * 5)
    eventually(
        lambda: wait_for_incidents(collector, "detector = 'loop' AND sessions_affected >= 3"),
        what="one loop incident over 3 sessions",
    )
    time.sleep(1.5)  # containment listens right after the rows are stored; give it time
    check = requests.get(
        f"{collector.api_url}/v1/control/check",
        params={"service": "support-svc", "agent": "support", "tool": "lookup_order"},
    ).json()
    assert check["tool_enabled"] is True and check["controls"] == []
    assert collector.query("SELECT * FROM control_audit") == []


# --- point 2: every link works ------------------------------------------------------------------


def test_by_default_the_incident_link_opens_the_console_page_of_the_incident(collector):
    incident = loop_incident(collector)
    assert incident["link"] == f"{collector.api_url}/incidents/{incident['incident_id']}"
    page = requests.get(incident["link"], timeout=30)
    assert page.status_code == 200
    assert "lookup_order called 4+ times" in html.unescape(page.text)


def test_with_an_api_token_the_link_opens_the_incident_after_logging_in(collector_factory):
    with collector_factory(api_token="s3cret") as collector:
        run_agent(collector, "loop-1", "u-1", [42] * 6)
        [incident] = wait_for_incidents(collector, "detector = 'loop'")
        browser = requests.Session()
        login = browser.get(incident["link"], timeout=30)
        assert login.status_code == 200 and "/login?next=" in login.url  # not a 401 dead end
        opened = browser.post(
            f"{collector.api_url}/login",
            data={"token": "s3cret", "next": f"/incidents/{incident['incident_id']}"},
            headers={"Origin": collector.api_url},
            timeout=30,
        )
        assert opened.status_code == 200 and opened.url == incident["link"]
        assert "lookup_order called 4+ times" in html.unescape(opened.text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_public_url_makes_every_page_carry_the_console_link(collector_factory, caplog, monkeypatch):
    monkeypatch.setattr(collector_app, "_EVENT_LOG", RateLimitedLog(collector_app.log))
    caplog.set_level(logging.INFO)
    hook = FakeReceiver()
    api_port = free_port()
    public_url = f"http://localhost:{api_port}"  # the name people use, not the bind address
    settings = {
        **paging({"name": "hook", "type": "webhook", "url": hook.url}),
        "api_port": api_port,
        "incident_link_template": "",  # paging()'s Grafana link would win over public_url
    }
    try:
        with collector_factory(public_url=public_url + "/", **settings) as collector:
            incident = loop_incident(collector)
            link = f"{public_url}/incidents/{incident['incident_id']}"
            assert incident["link"] == link
            [page] = eventually(lambda: hook.bodies(), what="the page")
            assert page["incident"]["link"] == link
            assert isinstance(page["incident"]["evidence"], list)  # JSON, as the API
            assert page["incident"]["first_seen"] == incident["first_seen"]  # ISO, as the API
            opened = requests.get(page["incident"]["link"], timeout=30)
            assert opened.status_code == 200 and incident["incident_id"] in opened.text
            eventually(lambda: "sent to hook" in caplog.text, what="the page's log line")
    finally:
        hook.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "agentwatch"]
    assert (
        f"incident {incident['incident_id']} opened: SEV2 semantic loop/repeated_call"
        in "\n".join(lines)
    )
    assert any(
        line.startswith(f"page trigger of incident {incident['incident_id']} sent to hook")
        for line in lines
    )


# --- point 9: the log says what happened, once ----------------------------------------------


def test_refused_spans_are_logged_once_a_minute_with_a_count(collector, caplog, monkeypatch):
    log = RateLimitedLog(logging.getLogger("agentwatch.receivers"))
    monkeypatch.setattr(otlp_receivers, "REFUSED_LOG", log)
    caplog.set_level(logging.INFO)
    url = f"{collector.http_url}/v1/traces"
    for _ in range(5):
        answer = requests.post(
            url, data=b"not OTLP", headers={"Content-Type": "application/x-protobuf"}
        )
        assert answer.status_code == 400
    refused = [r.getMessage() for r in caplog.records if r.name == "agentwatch.receivers"]
    assert len(refused) == 1, refused
    assert refused[0].startswith("OTLP/http request refused (invalid), no span stored:")
    log.clock = lambda: time.monotonic() + 61  # a minute later, the next one says how many
    requests.post(url, data=b"not OTLP", headers={"Content-Type": "application/x-protobuf"})
    refused = [r.getMessage() for r in caplog.records if r.name == "agentwatch.receivers"]
    assert refused[-1].endswith("(4 more like it in the last 60 s not logged)"), refused


# --- point 9: a port already taken -------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--api-port", "--otlp-grpc-port"])
def test_serve_on_a_taken_port_exits_at_once_naming_the_port_and_its_flag(tmp_path, flag):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    ports = {"--otlp-grpc-port": "0", "--otlp-http-port": "0", "--sql-port": "0", "--api-port": "0"}
    ports[flag] = str(port)
    started = time.monotonic()
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "agentwatch.cli.main", "serve", "--data-dir", str(tmp_path),
             *[arg for item in ports.items() for arg in item]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        held.close()
    assert ran.returncode != 0
    assert time.monotonic() - started < 20
    key = flag[2:].replace("-", "_")
    assert f"port {port} on 127.0.0.1 ({key}) is already in use" in ran.stderr, ran.stderr
    assert f"choose another with {flag}" in ran.stderr


def test_a_port_taken_between_the_check_and_the_bind_is_named_too(tmp_path, monkeypatch):
    """The check before start-up can race another process; the listener's own bind says it."""
    from tests.conftest import run_collector

    monkeypatch.setattr(collector_app, "check_ports_free", lambda config: None)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for key in ("otlp_grpc_port", "sql_port"):
            with pytest.raises(collector_app.PortInUse, match=rf"port {port} .*\({key}\)"):
                with run_collector(tmp_path / key, detect=False, **{key: port}):
                    pass
