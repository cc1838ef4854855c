"""Gamedays end to end (issue 16): `agentwatch gameday run` sends a failure's spans with the real
OpenTelemetry SDK to a real collector, the real detectors open a DRILL incident, its page goes to
a local receiver with [DRILL] in its title (a `drill: true` route sends it elsewhere), production
views leave it out; on call acks, contains (checked by a real OpenFeature client), names the
off-rails step, captures the case and resolves; `agentwatch gameday report` scores it."""

from __future__ import annotations

import json
import re

import openfeature.api as openfeature
import pytest
import requests
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

from agentwatch.config import load_config
from tests.fake_pagers import FakeReceiver
from tests.test_cli import agentwatch
from tests.test_detect_e2e import run_agent, wait_for_incidents
from tests.test_paging import eventually

POLICY = """
agents:
  - name: support-scope
    match: {agent: support}
    allowed_tools: [lookup_order, search_docs]
"""


def run_drill(collector, scenario: str, agent: str = "support", *more: str) -> str:
    """`agentwatch gameday run` in its own process (the SDK exporter as an agent has it)."""
    out = agentwatch("gameday", "run", "--scenario", scenario, "--agent", agent,
                     "--actor", "alice", *more, api_url=collector.api_url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return re.search(r"^(dr-[0-9a-f]{12}): ", out.stdout, re.M).group(1)


def drill_incident(collector, drill_id: str) -> dict:
    [incident] = wait_for_incidents(
        collector, f"drill AND startsWith(session_id, '{drill_id}-') LIMIT 1", timeout_s=20
    )
    return incident


def report(collector, drill_id: str) -> dict:
    out = agentwatch("gameday", "report", drill_id, "--format", "json", api_url=collector.api_url)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def count(collector, view: str) -> int:
    return int(collector.query(f"SELECT count() AS n FROM {view}")[0]["n"])


def test_every_scenario_trips_its_detector_with_the_default_thresholds(collector_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)  # only a scope for support: every threshold is the default
    with collector_factory(policy_file=policy) as collector:
        expected = {
            "loop": ("loop", "repeated_call"),
            "cost_spiral": ("cost_runaway", "spend_anomaly"),
            "out_of_scope": ("out_of_scope_tool", "unlisted_tool"),
            "provider_outage": ("infrastructure", "provider_5xx"),
            "context_spiral": ("context_growth", "spiral"),
        }
        for scenario, (detector, kind) in expected.items():
            drill_id = run_drill(collector, scenario)
            [incident] = wait_for_incidents(
                collector,
                f"drill AND detector = '{detector}' AND startsWith(session_id, '{drill_id}-')",
                timeout_s=20,
            )
            assert incident["kind"] == kind, scenario
            assert incident["title"].startswith("[DRILL] "), incident["title"]
            assert incident["service"] == f"gameday-{drill_id}"
            assert report(collector, drill_id)["drill"]["incident_id"] == incident["incident_id"]

        # drills are not production: none of them counts in the views on-call reads
        drills = count(collector, "incidents_current")
        assert drills >= 5 and count(collector, "open_incidents_with_drills") == drills
        for view in ("open_incidents", "incident_recurrence", "incident_mttr"):
            assert count(collector, view) == 0, view
        spans = collector.query("SELECT countIf(Drill) AS d, count() AS n FROM otel_traces")[0]
        assert int(spans["d"]) == int(spans["n"]) > 0

        # no scope declared for this agent: the drill says so instead of sending spans that
        # could never fire
        out = agentwatch("gameday", "run", "--scenario", "out_of_scope", "--agent", "billing",
                         api_url=collector.api_url)  # fmt: skip
        assert out.returncode != 0 and "declares no scope" in out.stderr


@pytest.fixture
def pagers():
    oncall, drills = FakeReceiver(), FakeReceiver()
    yield oncall, drills
    oncall.close()
    drills.close()


def titles(receiver: FakeReceiver) -> list[str]:
    return [b["incident"]["title"] for b in receiver.bodies() if b["action"] == "trigger"]


def test_a_drill_is_paged_contained_scored_and_compared(collector_factory, pagers):
    oncall, drills = pagers
    paging = {
        "receivers": [
            {"name": "oncall", "type": "webhook", "url": oncall.url},
            {"name": "drills", "type": "webhook", "url": drills.url},
        ],
        "route": {
            "receiver": "oncall",
            "group_wait_s": 0,
            "routes": [{"receiver": "drills", "match": {"drill": True}}],
        },
        "retry_initial_s": 0.2,
    }
    with collector_factory(paging=paging) as collector:
        api = collector.api_url
        drill_id = run_drill(collector, "loop")
        incident = drill_incident(collector, drill_id)
        incident_id, service = incident["incident_id"], incident["service"]

        # the page goes out for real, [DRILL] in its title, to the drills' receiver only
        eventually(lambda: titles(drills), what="the drill's page")
        assert titles(drills)[0].startswith("[DRILL] support: ")
        assert titles(oncall) == []
        # ... while a real loop still pages on call, and only it counts in production views
        run_agent(collector, "real-1", "u-1", [42] * 6)
        eventually(lambda: titles(oncall), what="the production page")
        assert not titles(oncall)[0].startswith("[DRILL]")
        [real] = collector.query("SELECT incident_id, fingerprint FROM open_incidents")
        assert real["fingerprint"] != incident["fingerprint"]

        # on call responds: ack, pause the drill's agent (seen by a real OpenFeature client),
        # name the off-rails step, capture the case, resolve
        assert agentwatch("incidents", "ack", incident_id, api_url=api).returncode == 0
        paused = agentwatch("pause", "--agent", "support", "--service", service,
                            "--reason", "gameday", api_url=api)  # fmt: skip
        assert paused.returncode == 0, paused.stderr
        openfeature.set_provider(OFREPProvider(api))
        try:
            agent = EvaluationContext(f"{drill_id}-1", {"agent": "support", "service": service})
            flags = openfeature.get_client("drill-agent")
            eventually(
                lambda: flags.get_boolean_value("agent.enabled", True, agent) is False,
                what="the pause reaching the agent",
            )
        finally:
            openfeature.shutdown()
        # the off-rails step, named on the console's incident page (a small form) ...
        console = requests.Session()
        page = console.post(f"{api}/login", data={"token": "", "actor": "carol",
                                                  "next": f"/incidents/{incident_id}"})  # fmt: skip
        assert "Name the off-rails step" in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        named = console.post(f"{api}/incidents/{incident_id}/off-rails-step",
                             data={"csrf": csrf, "span_id": incident["span_id"]})  # fmt: skip
        assert f"Named: <code>{incident['span_id']}</code>" in named.text
        # ... or from the CLI, which checks the span is one of the incident's run
        step = agentwatch("incidents", "set-step", incident_id, incident["span_id"], api_url=api)
        assert step.returncode == 0, step.stderr
        wrong = agentwatch("incidents", "set-step", incident_id, "0" * 16, api_url=api)
        assert wrong.returncode != 0 and "not a span of incident" in wrong.stderr
        captured = agentwatch("incidents", "capture", incident_id, "--expected",
                              "stop after one lookup", api_url=api)  # fmt: skip
        assert captured.returncode == 0, captured.stderr
        assert agentwatch("incidents", "resolve", incident_id, api_url=api).returncode == 0

        first = eventually(
            lambda: (r := report(collector, drill_id))["drill"]["status"] == "done" and r,
            what="the drill's score",
        )
        steps = {row["step"]: row for row in first["steps"]}
        assert list(steps) == ["incident", "paged", "acknowledged", "contained", "step_named",
                               "case_captured", "resolved"]  # fmt: skip
        assert all(row["seconds"] is not None for row in steps.values()), steps
        assert all(row["verdict"] == "PASS" for row in steps.values()), steps
        assert first["verdict"] == "PASS" and first["drill"]["contained_state"] == "paused"
        times = [steps[name]["seconds"] for name in ("incident", "acknowledged", "resolved")]
        assert times == sorted(times)
        stored = collector.query("SELECT * FROM incidents_current WHERE incident_id = {id:String}",
                                 {"id": incident_id})[0]  # fmt: skip
        assert (stored["drill"], stored["off_rails_span_id"]) == (True, incident["span_id"])
        [row] = collector.query("SELECT status, resolved_s FROM gamedays FINAL")
        assert row["status"] == "done" and row["resolved_s"] == steps["resolved"]["seconds"]

        # a second drill of the scenario, resolved without containment: compared with the first
        second_id = run_drill(collector, "loop")
        second = drill_incident(collector, second_id)
        assert second["incident_id"] != incident_id
        agentwatch("incidents", "resolve", second["incident_id"], api_url=api)
        text = eventually(
            lambda: (
                (out := agentwatch("gameday", "report", second_id, api_url=api).stdout).count(
                    "MISS"
                )
                and out
            ),
            what="the second drill's score",
        )
        again = report(collector, second_id)
        rows = {row["step"]: row for row in again["steps"]}
        assert again["earlier_drills"] == 1 and again["verdict"] == "MISS"
        assert rows["contained"]["verdict"] == "MISS" and rows["contained"]["seconds"] is None
        assert rows["incident"]["previous_s"] == steps["incident"]["seconds"]
        assert rows["incident"]["best_s"] == steps["incident"]["seconds"]
        assert rows["incident"]["change"] in ("better", "worse", "same")
        assert "containment in force" in text and "never happened" in text
        assert count(collector, "open_incidents") == 1  # the real loop only


def test_routes_accept_drill_as_a_label():
    config = load_config(
        None,
        {
            "paging": {
                "receivers": [{"name": "x", "type": "webhook", "url": "http://127.0.0.1:1"}],
                "route": {"receiver": "x", "routes": [{"receiver": "x", "match": {"drill": True}}]},
            }
        },
    )
    assert config.paging.route.routes[0].match == {"drill": "true"}
