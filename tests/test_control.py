"""Containment as agents and on-call see it: a real OpenFeature client checks flags over OFREP,
people flip them with the CLI, policy flips them from incidents made of real OTel spans."""

from __future__ import annotations

import dataclasses
import time

import pytest
import requests
from openfeature import api as openfeature
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from analyzer.incidents.model import IncidentEvent, IncidentRecord, IncidentRows
from tests.test_cli import agentwatch
from tests.test_detect_e2e import agent_tracer, run_agent, wait_for_incidents


@pytest.fixture
def flags(collector):
    """An OpenFeature client on the collector's OFREP endpoint, as an agent would set it up."""
    openfeature.set_provider(OFREPProvider(collector.api_url))
    yield openfeature.get_client("support-agent")
    openfeature.shutdown()


def support(session: str = "s-1", user: str = "u-1", **more) -> EvaluationContext:
    return EvaluationContext(
        targeting_key=session, attributes={"agent": "support", "user": user, **more}
    )


def test_an_agent_sees_a_pause_and_the_resume_through_openfeature(collector, flags):
    # fail-closed pattern: default False, so an unreachable collector stops the action too
    assert flags.get_boolean_value("agent.enabled", False, support()) is True
    assert flags.get_string_value("agent.state", "unknown", support()) == "enabled"

    out = agentwatch("pause", "--agent", "support", "--reason", "refund loop", "--actor", "alice",
                     api_url=collector.api_url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "paused agent=support (was enabled)" in out.stdout

    metrics = requests.get(f"{collector.api_url}/metrics").text
    assert 'agentwatch_control_changes_total{mode="paused",source="person"} 1.0' in metrics
    assert "agentwatch_controls_in_force 1.0" in metrics

    details = flags.get_boolean_details("agent.enabled", True, support())
    assert details.value is False
    assert details.reason == "TARGETING_MATCH"
    assert "refund loop" in details.flag_metadata["controls"]
    assert flags.get_boolean_value("agent.runs.enabled", True, support()) is False
    assert flags.get_boolean_value("tool.lookup_order.enabled", True, support()) is False
    # another agent is untouched
    other = EvaluationContext("s-9", {"agent": "billing"})
    assert flags.get_boolean_value("agent.enabled", False, other) is True

    out = agentwatch("resume", "--agent", "support", "--reason", "fixed", api_url=collector.api_url)
    assert out.returncode == 0, out.stderr
    assert flags.get_boolean_value("agent.enabled", False, support()) is True

    audit = collector.query(
        "SELECT mode, previous_mode, actor, source, reason FROM control_audit ORDER BY at"
    )
    assert [(a["mode"], a["previous_mode"], a["actor"], a["source"]) for a in audit] == [
        ("paused", "enabled", "alice", "person"),
        ("enabled", "paused", audit[1]["actor"], "person"),
    ]
    assert audit[0]["reason"] == "refund loop"


def test_modes_by_scope_and_the_most_restrictive_wins(collector, flags):
    api = collector.api_url
    assert (
        agentwatch("freeze", "--session", "s-1", "--reason", "budget", api_url=api).returncode == 0
    )
    assert (
        agentwatch("quarantine", "--user", "u-7", "--reason", "abuse", api_url=api).returncode == 0
    )
    assert agentwatch("pause", "--tool", "refund_order", "--agent", "support", "--reason", "bad refunds",
                      api_url=api).returncode == 0  # fmt: skip

    # budget freeze: the session may finish what it does, but starts no new run
    assert flags.get_boolean_value("agent.enabled", False, support("s-1")) is True
    assert flags.get_boolean_value("agent.runs.enabled", True, support("s-1")) is False
    assert flags.get_string_value("agent.state", "", support("s-1")) == "budget_frozen"
    # the quarantined user is stopped in any session; the frozen session's state is the stricter
    assert flags.get_string_value("agent.state", "", support("s-1", user="u-7")) == "quarantined"
    assert flags.get_boolean_value("agent.enabled", True, support("s-2", user="u-7")) is False
    # the tool circuit: only that tool, only for that agent
    assert flags.get_boolean_value("tool.refund_order.enabled", True, support("s-3")) is False
    assert flags.get_boolean_value("tool.lookup_order.enabled", False, support("s-3")) is True
    billing = EvaluationContext("s-3", {"agent": "billing"})
    assert flags.get_boolean_value("tool.refund_order.enabled", False, billing) is True

    listing = agentwatch("control", "list", api_url=api)
    assert listing.returncode == 0, listing.stderr
    for expected in ("session=s-1", "budget_frozen", "user=u-7", "quarantined",
                     "agent=support;tool=refund_order", "circuit_open", "bad refunds"):  # fmt: skip
        assert expected in listing.stdout

    check = requests.get(
        f"{api}/v1/control/check", params={"agent": "support", "user": "u-7"}
    ).json()
    assert (check["state"], check["agent_enabled"], check["runs_enabled"]) == (
        "quarantined",
        False,
        False,
    )
    assert [c["scope"] for c in check["controls"]] == ["user=u-7"]


def test_the_ofrep_bulk_endpoint_lists_every_flag(collector):
    agentwatch("kill", "--global", "--reason", "outage", api_url=collector.api_url)
    body = requests.post(f"{collector.api_url}/ofrep/v1/evaluate/flags",
                         json={"context": {"agent": "x"}}).json()  # fmt: skip
    values = {f["key"]: f["value"] for f in body["flags"]}
    assert values == {"agent.enabled": False, "agent.runs.enabled": False,
                      "agent.state": "killed", "tool.enabled": False}  # fmt: skip


def test_bad_requests_get_clear_errors(collector, flags):
    api = collector.api_url
    unknown_scope = requests.post(
        f"{api}/v1/control", json={"mode": "paused", "scope": {"team": "a"}, "reason": "x"}
    )
    assert unknown_scope.status_code == 400
    assert "unknown scope field(s) team" in unknown_scope.json()["error"]

    no_reason = requests.post(f"{api}/v1/control", json={"mode": "paused", "scope": {"agent": "a"}})
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]

    bad_mode = requests.post(f"{api}/v1/control", json={"mode": "off", "scope": {}, "reason": "x"})
    assert bad_mode.status_code == 400 and "'mode' must be one of" in bad_mode.json()["error"]

    no_subject = requests.post(
        f"{api}/v1/control", json={"mode": "quarantined", "scope": {"agent": "a"}, "reason": "x"}
    )
    assert no_subject.status_code == 400 and "--user" in no_subject.json()["error"]

    nothing = requests.post(
        f"{api}/v1/control/resume", json={"scope": {"agent": "a"}, "reason": "x"}
    )
    assert (
        nothing.status_code == 404 and "nothing is in force for agent=a" in nothing.json()["error"]
    )

    cli = agentwatch("pause", "--agent", "support", api_url=api)
    assert cli.returncode == 2 and "Missing option '--reason'" in cli.stderr
    cli = agentwatch("pause", "--reason", "x", api_url=api)
    assert cli.returncode == 2 and "--global for everyone" in cli.stderr

    unknown_flag = requests.post(
        f"{api}/ofrep/v1/evaluate/flags/agent.colour", json={"context": {}}
    )
    assert unknown_flag.status_code == 404 and unknown_flag.json()["errorCode"] == "FLAG_NOT_FOUND"
    bad_context = requests.post(
        f"{api}/ofrep/v1/evaluate/flags/agent.enabled", json={"context": {"agent": 7}}
    )
    assert bad_context.status_code == 400 and bad_context.json()["errorCode"] == "INVALID_CONTEXT"
    # the fail-closed client: an error evaluates to the default, False
    assert (
        flags.get_boolean_value("agent.enabled", False, EvaluationContext("s", {"agent": 7}))
        is False
    )


def test_writes_need_a_token(collector_factory):
    with collector_factory(api_token="s3cret") as collector:
        api = collector.api_url
        cli = agentwatch("pause", "--agent", "a", "--reason", "x", api_url=api)
        assert cli.returncode == 1 and "401" in cli.stderr and "API token" in cli.stderr
        ok = agentwatch("pause", "--agent", "a", "--reason", "x", api_url=api, token="s3cret")
        assert ok.returncode == 0, ok.stderr
        openfeature.set_provider(
            OFREPProvider(api, headers_factory=lambda: {"Authorization": "Bearer s3cret"})
        )
        try:
            client = openfeature.get_client()
            assert (
                client.get_boolean_value(
                    "agent.enabled", True, EvaluationContext("s", {"agent": "a"})
                )
                is False
            )
        finally:
            openfeature.shutdown()

    # beyond loopback, no token configured (allowed only on purpose)
    with collector_factory(listen="0.0.0.0", allow_unauthenticated=True) as collector:
        refused = requests.post(f"{collector.api_url}/v1/control",
                                json={"mode": "paused", "scope": {}, "reason": "x"})  # fmt: skip
        assert refused.status_code == 403 and "need an API token" in refused.json()["error"]
        assert requests.get(f"{collector.api_url}/v1/control/check").json()["state"] == "enabled"


def test_controls_survive_a_restart_and_writes_by_another_collector_are_seen(
    collector_factory, tmp_path
):
    data = tmp_path / "shared"
    from tests.conftest import run_collector

    with run_collector(data) as collector:
        assert (
            agentwatch(
                "pause", "--agent", "support", "--reason", "x", api_url=collector.api_url
            ).returncode
            == 0
        )
    with run_collector(data) as collector:
        check = requests.get(f"{collector.api_url}/v1/control/check", params={"agent": "support"})
        assert check.json()["state"] == "paused"
        # another collector on the same ClickHouse server writes a control row: seen on refresh
        collector.call(collector.collector.run_store(
            collector.collector.store.command,
            "INSERT INTO control_state (key, user_id, mode, actor, source, reason, at, version)"
            " VALUES ('user=u-5', 'u-5', 'quarantined', 'bob', 'person', 'elsewhere', now64(9), 1)",
        ))  # fmt: skip
        deadline = time.monotonic() + 10
        state = "enabled"
        while state == "enabled" and time.monotonic() < deadline:
            time.sleep(0.1)
            state = requests.get(
                f"{collector.api_url}/v1/control/check", params={"user": "u-5"}
            ).json()["state"]
        assert state == "quarantined"


POLICY = """
version: 1
defaults:
  actions: {loop: pause_session, SEV1: kill_agent}
  tool_circuit: {sessions: 2, window_s: 600}
"""


def test_a_loop_incident_pauses_its_session_by_policy(collector_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with collector_factory(policy_file=policy) as collector:
        openfeature.set_provider(OFREPProvider(collector.api_url))
        flags = openfeature.get_client()
        try:
            assert flags.get_boolean_value("agent.enabled", False, support("loop-1")) is True
            run_agent(collector, "loop-1", "u-1", [42] * 6)
            [incident] = wait_for_incidents(collector, "detector = 'loop'")

            deadline = time.monotonic() + 10
            while (
                flags.get_boolean_value("agent.enabled", False, support("loop-1"))
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            assert flags.get_string_value("agent.state", "", support("loop-1")) == "paused"
            assert (
                flags.get_boolean_value("agent.enabled", False, support("another-session")) is True
            )
        finally:
            openfeature.shutdown()

        [audit] = collector.query("SELECT * FROM control_audit")
        assert (
            audit["key"],
            audit["mode"],
            audit["source"],
            audit["actor"],
            audit["incident_id"],
        ) == (
            "tenant=default;session=loop-1",
            "paused",
            "policy",
            "policy",
            incident["incident_id"],
        )  # fmt: skip  (the incident's tenant: spans without tenant.id are default_tenant's)
        assert "loop/SEV2 -> pause_session" in audit["reason"]
        events = collector.query(
            "SELECT event, actor, detail FROM incident_events WHERE incident_id = {id:String} ORDER BY at",
            {"id": incident["incident_id"]},
        )
        contained = [e for e in events if e["event"] == "contained"]
        assert len(contained) == 1 and contained[0]["detail"].startswith(
            "paused tenant=default;session=loop-1"
        )

        # resolving the incident does not lift the pause: only a person does
        requests.post(
            f"{collector.api_url}/v1/incidents/{incident['incident_id']}/resolve", json={}
        )
        check = requests.get(
            f"{collector.api_url}/v1/control/check", params={"session": "loop-1"}
        ).json()
        assert check["state"] == "paused"


def test_findings_on_one_tool_in_several_sessions_open_its_circuit(collector_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with collector_factory(policy_file=policy) as collector:
        check = f"{collector.api_url}/v1/control/check"
        params = {"service": "support-svc", "agent": "support", "tool": "lookup_order"}
        run_agent(collector, "loop-a", "u-1", [42] * 5)
        wait_for_incidents(collector, "detector = 'loop'")
        assert requests.get(check, params=params).json()["tool_enabled"] is True  # one session

        run_agent(collector, "loop-b", "u-2", [43] * 5)
        deadline = time.monotonic() + 10
        while (
            requests.get(check, params=params).json()["tool_enabled"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        decision = requests.get(check, params=params).json()
        assert decision["tool_enabled"] is False
        assert [c["scope"] for c in decision["controls"] if c["mode"] == "circuit_open"] == [
            "tenant=default;service=support-svc;agent=support;tool=lookup_order"
        ]
        # other tools of the agent, and other agents' use of the tool, are untouched
        assert (
            requests.get(check, params={**params, "tool": "search"}).json()["tool_enabled"] is True
        )
        assert (
            requests.get(check, params={**params, "agent": "billing"}).json()["tool_enabled"]
            is True
        )


def test_a_policy_action_stops_only_its_incidents_tenant(collector_factory, tmp_path):
    """Two tenants run an agent of the same name; the loop in one pauses that tenant's session
    and leaves the other's same-named session alone."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    tenants = {"acme": {"ingest_token": "acme-in"}, "beta": {"ingest_token": "beta-in"}}
    with collector_factory(policy_file=policy, api_token="admin", tenants=tenants) as collector:
        run_agent(collector, "shared-session", "u-1", [42] * 6, token="acme-in")
        wait_for_incidents(collector, "detector = 'loop'")
        check = f"{collector.api_url}/v1/control/check"
        admin = {"Authorization": "Bearer admin"}
        params = {"session": "shared-session"}
        deadline = time.monotonic() + 10
        while (
            requests.get(check, params={**params, "tenant": "acme"}, headers=admin).json()["state"]
            == "enabled"
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        acme = requests.get(check, params={**params, "tenant": "acme"}, headers=admin).json()
        assert acme["state"] == "paused"
        assert [c["scope"] for c in acme["controls"]] == ["tenant=acme;session=shared-session"]
        beta = requests.get(check, params={**params, "tenant": "beta"}, headers=admin).json()
        assert beta["state"] == "enabled"


# --- the run in progress: controls scoped to a trace ---------------------------------------------


def current_trace_id() -> str:
    """What an agent instrumented with OpenTelemetry passes as ``trace_id`` (README)."""
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def test_a_trace_pause_stops_the_run_checking_with_that_trace_and_no_other(collector, flags):
    tracer = TracerProvider().get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent support"):
        run = current_trace_id()
    with tracer.start_as_current_span("invoke_agent support"):
        other_run = current_trace_id()
    assert flags.get_boolean_value("agent.enabled", False, support(trace_id=run)) is True

    # the id as a person may paste it (upper case) is stored as the spans store it
    out = agentwatch("pause", "--trace", run.upper(), "--reason", "refund loop mid-run",
                     api_url=collector.api_url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"paused trace={run} (was enabled)" in out.stdout

    assert flags.get_boolean_value("agent.enabled", True, support(trace_id=run)) is False
    assert flags.get_string_value("agent.state", "", support(trace_id=run)) == "paused"
    assert (
        flags.get_boolean_value("tool.refund_order.enabled", True, support(trace_id=run)) is False
    )
    # another run of the same session and agent, and a check without a trace, go on
    assert flags.get_boolean_value("agent.enabled", False, support(trace_id=other_run)) is True
    assert flags.get_boolean_value("agent.enabled", False, support()) is True
    # the plain HTTP check and the OFREP aliases see the same
    check = f"{collector.api_url}/v1/control/check"
    assert requests.get(check, params={"trace": run}).json()["state"] == "paused"
    bulk = requests.post(f"{collector.api_url}/ofrep/v1/evaluate/flags",
                         json={"context": {"trace.id": run}}).json()  # fmt: skip
    assert {f["key"]: f["value"] for f in bulk["flags"]}["agent.state"] == "paused"

    listing = agentwatch("control", "list", api_url=collector.api_url)
    assert f"trace={run}" in listing.stdout and "refund loop mid-run" in listing.stdout
    told = agentwatch("control", "check", "--trace", run, api_url=collector.api_url)
    assert told.returncode == 0 and '"state": "paused"' in told.stdout
    [audit] = collector.query("SELECT key, trace_id, mode FROM control_audit")
    assert audit == {"key": f"trace={run}", "trace_id": run, "mode": "paused"}
    [in_force] = collector.query("SELECT trace_id, mode FROM controls_in_force")
    assert in_force == {"trace_id": run, "mode": "paused"}

    out = agentwatch("resume", "--trace", run, "--reason", "fixed", api_url=collector.api_url)
    assert out.returncode == 0, out.stderr
    assert flags.get_boolean_value("agent.enabled", False, support(trace_id=run)) is True


def test_a_bad_trace_id_is_refused_with_a_clear_error(collector, flags):
    api = collector.api_url
    for bad in ("4bf92f35", "z" * 32, "0" * 32):
        refused = requests.post(
            f"{api}/v1/control", json={"mode": "paused", "scope": {"trace": bad}, "reason": "x"}
        )
        assert refused.status_code == 400
        assert "trace id must be 32 hex digits" in refused.json()["error"]
    cli = agentwatch("kill", "--trace", "not-a-trace", "--reason", "x", api_url=api)
    assert cli.returncode == 1
    assert "400: trace id must be 32 hex digits" in cli.stderr and "'not-a-trace'" in cli.stderr

    check = requests.get(f"{api}/v1/control/check", params={"trace": "abc"})
    assert check.status_code == 400 and "trace id must be 32 hex digits" in check.json()["error"]
    ofrep = requests.post(
        f"{api}/ofrep/v1/evaluate/flags/agent.enabled", json={"context": {"trace_id": "abc"}}
    )
    assert ofrep.status_code == 400 and ofrep.json()["errorCode"] == "INVALID_CONTEXT"
    assert "32 hex digits" in ofrep.json()["errorDetails"]
    # the fail-closed client: an agent sending a malformed trace id is not waved through
    assert flags.get_boolean_value("agent.enabled", False, support(trace_id="abc")) is False
    assert collector.query("SELECT * FROM control_audit") == []


RUN_POLICY = """
version: 1
defaults:
  actions: {loop: pause_session, SEV1: quarantine_user}
"""


def incident(trace_id: str, **fields) -> IncidentRecord:
    """An incident as the lifecycle writes it mid-run: no session or user known yet."""
    now = time.time_ns()
    values = dict(
        incident_id=f"inc-{trace_id[:8]}", fingerprint=f"fp-{trace_id[:8]}", version=1,
        detector="loop", kind="repeated_call", incident_class="semantic", severity="SEV2",
        status="open", title="lookup_order called 6 times with the same arguments", summary="",
        tenant="default", service="support-svc", agent="support", session_id="", user_id="",
        trace_id=trace_id, span_id="00f067aa0ba902b7", tool="", evidence=(), first_seen_ns=now,
        last_seen_ns=now, occurrences=1, sessions_affected=1, users_affected=1, link="",
    )  # fmt: skip
    values.update(fields)
    return IncidentRecord(**values)


def event(record: IncidentRecord, kind: str) -> IncidentEvent:
    return IncidentEvent(record.incident_id, record.fingerprint, time.time_ns(), kind,
                         "agentwatch", "", record.session_id, record.user_id, record.trace_id)  # fmt: skip


def test_policy_on_a_sessionless_incident_stops_its_trace_then_its_session(
    collector_factory, tmp_path
):
    policy = tmp_path / "policy.yaml"
    policy.write_text(RUN_POLICY)
    run, other_run = "4bf92f3577b34da6a3ce929d0e0e4736", "5bf92f3577b34da6a3ce929d0e0e4736"
    with collector_factory(policy_file=policy) as collector:
        check = f"{collector.api_url}/v1/control/check"

        def state(**context) -> str:
            return requests.get(check, params=context).json()["state"]

        def publish(record: IncidentRecord, kind: str) -> None:
            rows = IncidentRows([record], [event(record, kind)])
            collector.call(collector.collector.incident_repository.write(rows))
            collector.call(collector.collector.publish_incident_rows(rows))

        def timeline(record: IncidentRecord) -> list[str]:
            return [e["detail"] for e in collector.query(
                "SELECT detail FROM incident_events WHERE incident_id = {id:String}"
                " AND event = 'contained' ORDER BY at", {"id": record.incident_id})]  # fmt: skip

        # mid-run: the loop incident has only its trace; pause_session pauses the trace
        opened = incident(run)
        publish(opened, "opened")
        assert state(trace=run) == "paused"
        assert state(trace=other_run, session="s-late") == "enabled"
        [note] = timeline(opened)
        assert note.startswith(f"paused trace {run} (no session known yet): policy")

        # the root span arrives: the incident is attributed, and its session is paused too
        attributed = dataclasses.replace(opened, version=2, session_id="s-late", user_id="u-7")
        publish(attributed, "attributed")
        assert state(session="s-late", trace=other_run) == "paused"  # the session's next run
        assert timeline(opened)[1].startswith(
            "paused tenant=default;session=s-late (the session became known after the incident"
            " opened): policy"
        )
        # once: a person resumes the session; a repeated attribution does not pause it again
        resumed = agentwatch("resume", "--tenant", "default", "--session", "s-late",
                             "--reason", "checked", api_url=collector.api_url)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        publish(dataclasses.replace(attributed, version=3), "attributed")
        assert state(session="s-late") == "enabled"
        assert state(trace=run) == "paused"  # the trace's control stays until a person lifts it
        assert len(timeline(opened)) == 2

        # quarantine_user (SEV1 here): the trace while the user is unknown, then the user
        severe = incident(other_run, severity="SEV1", detector="cost_runaway", session_id="s-2")
        publish(severe, "opened")
        assert state(trace=other_run) == "quarantined"
        assert timeline(severe)[0].startswith(f"quarantined trace {other_run} (no user known yet)")
        publish(dataclasses.replace(severe, version=2, user_id="u-9"), "attributed")
        assert state(user="u-9", session="s-other") == "quarantined"

        audit = collector.query(
            "SELECT key, trace_id, session_id, user_id, mode, source, incident_id"
            " FROM control_audit ORDER BY at"
        )
        assert [(a["key"], a["mode"], a["source"]) for a in audit] == [
            (f"tenant=default;trace={run}", "paused", "policy"),
            ("tenant=default;session=s-late", "paused", "policy"),
            ("tenant=default;session=s-late", "enabled", "person"),
            (f"tenant=default;trace={other_run}", "quarantined", "policy"),
            ("tenant=default;user=u-9", "quarantined", "policy"),
        ]
        assert audit[0]["trace_id"] == run and audit[0]["incident_id"] == opened.incident_id


def test_an_agent_is_stopped_mid_run_before_its_session_is_known(collector_factory, tmp_path):
    """The OTel GenAI shape: the session id is on the root span, exported last. The loop is
    found in the tool spans flushed mid-run; the agent, checking with its current trace id, is
    paused before its run ends; once the root span is in, its session is paused too."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(RUN_POLICY)
    with collector_factory(policy_file=policy) as collector:
        openfeature.set_provider(OFREPProvider(collector.api_url))
        flags = openfeature.get_client()
        provider, tracer = agent_tracer(collector)
        root = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support",
                "gen_ai.conversation.id": "late-1", "user.id": "u-1"}  # fmt: skip
        tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": '{"order_id": 42}'}  # fmt: skip
        try:
            with tracer.start_as_current_span("invoke_agent support", attributes=root):
                run = support("late-1", trace_id=current_trace_id())
                assert flags.get_boolean_value("agent.enabled", False, run) is True
                for _ in range(6):
                    with tracer.start_as_current_span("execute_tool lookup_order", attributes=tool):
                        pass
                provider.force_flush()  # the tool spans reach the collector; the root has not
                [opened] = wait_for_incidents(collector, "detector = 'loop'")
                assert opened["session_id"] == ""
                deadline = time.monotonic() + 10
                while flags.get_boolean_value("agent.enabled", False, run):
                    assert time.monotonic() < deadline, "the run was not paused"
                    time.sleep(0.1)
                assert flags.get_string_value("agent.state", "", run) == "paused"
            provider.shutdown()  # the root span, with the session id, is exported now

            next_run = support("late-1", trace_id="6" * 32)
            deadline = time.monotonic() + 10
            while flags.get_boolean_value("agent.enabled", False, next_run):
                assert time.monotonic() < deadline, "the session was not paused"
                time.sleep(0.1)
        finally:
            openfeature.shutdown()
        audit = collector.query("SELECT key, mode FROM control_audit ORDER BY at")
        assert [a["key"] for a in audit] == [
            f"tenant=default;trace={run.attributes['trace_id']}",
            "tenant=default;session=late-1",
        ]


def test_a_person_contains_an_incident_from_the_cli_and_its_timeline_says_so(collector, flags):
    run_agent(collector, "loop-c", "u-c", [42] * 6)
    [incident] = wait_for_incidents(collector, "detector = 'loop'")
    out = agentwatch("pause", "--session", "loop-c", "--incident", incident["incident_id"],
                     "--reason", "looping on lookup_order", "--actor", "alice",
                     api_url=collector.api_url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert flags.get_string_value("agent.state", "", support(session="loop-c")) == "paused"
    [audit] = collector.query("SELECT incident_id, actor FROM control_audit")
    assert audit == {"incident_id": incident["incident_id"], "actor": "alice"}
    [contained] = collector.query(
        "SELECT actor, detail FROM incident_events WHERE incident_id = {id:String}"
        " AND event = 'contained'",
        {"id": incident["incident_id"]},
    )
    assert contained["actor"] == "alice" and "paused session=loop-c" in contained["detail"]
    assert "looping on lookup_order" in contained["detail"]

    unknown = agentwatch("pause", "--session", "loop-c", "--incident", "inc-nope",
                         "--reason", "x", api_url=collector.api_url)  # fmt: skip
    assert unknown.returncode != 0 and "no incident inc-nope" in unknown.stderr
