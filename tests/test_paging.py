"""Paging end to end: real OTel spans -> a real collector -> incidents -> outbox -> local pagers.

The pagers are local HTTP receivers that answer as PagerDuty, Opsgenie and Slack document
(``tests/fake_pagers.py``); the collector is the real one, with its real store. One test or more
per pager type, the restarts, the HTTP API and the CLI; the pipeline's timing (group wait, folded
escalations, repeats, silences ending, backoff, give-up, resuming in order) is tested on a fake
clock in ``tests/analyzer/test_paging_timeline.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from pathlib import Path

import orjson
import pytest
import requests
from aiohttp import web
from click.testing import CliRunner

from agentwatch.cli.main import main as cli
from agentwatch.config import ConfigError, load_config
from tests.conftest import run_collector
from tests.fake_pagers import FakeOpsgenie, FakePagerDuty, FakeReceiver, FakeSlack
from tests.test_detect_e2e import agent_tracer, run_agent, wait_for_incidents

ROUTING_KEY = "r" * 32  # PagerDuty integration keys are 32 characters
LINK = "https://grafana.example/explore?trace={trace_id}"


def eventually(check, timeout_s: float = 20.0, what: str = "condition"):
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def paging(*receivers: dict, routes: list | None = None, **settings) -> dict:
    route = {"receiver": receivers[0]["name"], "group_wait_s": 0, "routes": routes or []}
    route.update(
        {k: settings.pop(k) for k in ("group_wait_s", "repeat_interval_s") if k in settings}
    )
    return {
        "paging": {
            "receivers": list(receivers),
            "route": route,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
            **settings,
        },
        "incident_link_template": LINK,
    }


@pytest.fixture
def pagerduty():
    fake = FakePagerDuty()
    yield fake
    fake.close()


def pd_receiver(fake, **more) -> dict:
    return {"name": "pd", "type": "pagerduty", "url": fake.url + "/v2/enqueue",
            "routing_key": ROUTING_KEY, "runbook_url": "https://runbooks.example/loop", **more}  # fmt: skip


def a_loop(collector, session="loop-1", calls=8) -> dict:
    run_agent(collector, session, "u-1", [42] * calls)
    [incident] = wait_for_incidents(collector, "detector = 'loop'")
    return incident


def api(collector, method: str, path: str, **kwargs):
    response = requests.request(method, collector.api_url + path, timeout=30, **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


def timeline(collector, incident_id: str) -> list[dict]:
    return api(collector, "GET", f"/v1/incidents/{incident_id}")["timeline"]


def outbox(collector, status="all") -> list[dict]:
    return api(collector, "GET", "/v1/alerts/outbox", params={"status": status})


# --- timelines ------------------------------------------------------------------------------------


def test_pagerduty_is_paged_once_per_incident_then_acknowledged_and_resolved(
    collector_factory, pagerduty
):
    with collector_factory(**paging(pd_receiver(pagerduty))) as collector:
        incident = a_loop(collector, calls=10)  # one incident, updated by the later calls
        run_agent(collector, "loop-2", "u-2", [42] * 6)  # same problem, another session
        eventually(lambda: pagerduty.bodies(), what="the trigger")
        api(
            collector, "POST", f"/v1/incidents/{incident['incident_id']}/ack", json={"actor": "ann"}
        )
        eventually(lambda: len(pagerduty.bodies()) >= 2, what="the acknowledge")
        api(collector, "POST", f"/v1/incidents/{incident['incident_id']}/resolve", json={})
        eventually(lambda: len(pagerduty.bodies()) >= 3, what="the resolve")

        events = pagerduty.bodies()
        assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
        assert {e["dedup_key"] for e in events} == {incident["fingerprint"]}
        trigger = events[0]
        assert trigger["payload"]["severity"] == "error"  # SEV2
        assert "support" in trigger["payload"]["summary"]
        links = {link["text"]: link["href"] for link in trigger["links"]}
        assert links["Incident"] == LINK.format(trace_id=incident["trace_id"])
        assert links["Runbook"] == "https://runbooks.example/loop"
        assert "session(s)" in trigger["payload"]["custom_details"]["blast_radius"]

        iid = incident["incident_id"]
        eventually(
            lambda: "page_resolved" in {e["event"] for e in timeline(collector, iid)},
            what="the page_resolved event",
        )
        paged = [(e["event"], e["actor"]) for e in timeline(collector, iid)]
        for event in ("paged", "page_acknowledged", "page_resolved"):
            assert (event, "default/pd") in paged
        assert outbox(collector, "unsettled") == []


# One run going wrong: a loop and a token-ratio spike (SEV2), then a token budget burst (SEV1).
RUNAWAY_POLICY = """
version: 1
defaults:
  budgets: {session_tokens: 20000}
  thresholds:
    token_ratio: {min_input_tokens: 1000, cold_ratio: 100, cold_min_input_tokens: 5000}
  actions: {SEV1: none, SEV2: none}
"""


def a_runaway(collector, session: str, loop_calls=0, llm_calls=(), service="support-svc") -> None:
    """One trace of ``session``: ``loop_calls`` identical tool calls, then LLM calls of
    (input, output) tokens."""
    provider, tracer = agent_tracer(collector, service)
    who = {"gen_ai.agent.name": "support", "gen_ai.conversation.id": session}
    with tracer.start_as_current_span(
        "invoke_agent support", attributes={"gen_ai.operation.name": "invoke_agent", **who}
    ):
        for _ in range(loop_calls):
            tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order",
                    "gen_ai.tool.call.arguments": '{"order_id": 42}', **who}  # fmt: skip
            with tracer.start_as_current_span("execute_tool lookup_order", attributes=tool):
                pass
        for input_tokens, output_tokens in llm_calls:
            llm = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                   "gen_ai.usage.input_tokens": input_tokens,
                   "gen_ai.usage.output_tokens": output_tokens, **who}  # fmt: skip
            with tracer.start_as_current_span("chat gpt-4o", attributes=llm):
                pass
    provider.shutdown()


def test_findings_on_one_run_are_one_page_at_their_worst_severity(
    collector_factory, pagerduty, tmp_path
):
    """Issue 13, point 8: a run that loops and reads 600:1 pages once; its budget burst (SEV1)
    re-triggers that page; it resolves once, with its last finding. Another run is another page."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(RUNAWAY_POLICY)
    with collector_factory(policy_file=policy, **paging(pd_receiver(pagerduty))) as collector:
        a_runaway(collector, "run-1", loop_calls=6, llm_calls=[(3000, 5)] * 3)
        # another service's loop: another incident (one a fingerprint), on another run
        a_runaway(collector, "run-2", loop_calls=6, service="billing-svc")
        found = eventually(
            lambda: len(rows := wait_for_incidents(collector, "1", timeout_s=0)) >= 3 and rows,
            what="the loop and token_ratio incidents of run-1 and the loop of run-2",
        )
        assert sorted((i["session_id"], i["detector"]) for i in found) == [
            ("run-1", "loop"), ("run-1", "token_ratio"), ("run-2", "loop"),
        ]  # fmt: skip
        eventually(lambda: len(pagerduty.bodies()) >= 2, what="one page per run")
        a_runaway(collector, "run-1", llm_calls=[(20000, 5)])  # another trace, the same session
        [budget] = wait_for_incidents(collector, "detector = 'cost_runaway'")
        assert (budget["session_id"], budget["severity"]) == ("run-1", "SEV1")
        eventually(lambda: len(pagerduty.bodies()) >= 3, what="the page of run-1 at SEV1")

        runs = {i["session_id"] for i in found}
        pages = {s: [b for b in pagerduty.bodies() if b["payload"]["custom_details"]["session_id"] == s]
                 for s in runs}  # fmt: skip
        assert [b["payload"]["severity"] for b in pages["run-1"]] == ["error", "critical"]
        assert [b["payload"]["severity"] for b in pages["run-2"]] == ["error"]
        first_of_run_1 = pages["run-1"][0]["payload"]["custom_details"]["incident_id"]
        assert {b["dedup_key"] for b in pages["run-1"]} == {
            next(i["fingerprint"] for i in found if i["incident_id"] == first_of_run_1)
        }
        listed = pages["run-1"][1]["payload"]["custom_details"]["findings"]
        assert sorted(f["detector"] for f in listed) == ["cost_runaway", "loop", "token_ratio"]
        folded = [i for i in [*found, budget] if i["session_id"] == "run-1"]
        folded = [i for i in folded if i["incident_id"] != first_of_run_1]
        for incident in folded:
            assert [e["detail"] for e in timeline(collector, incident["incident_id"])
                    if e["event"] == "page_folded"] == [
                f"folded into page of {first_of_run_1} (same session run-1)"
            ]  # fmt: skip
        rows = collector.query(
            "SELECT incident_id, page_of FROM page_outbox FINAL WHERE status = 'folded'"
        )
        assert {(r["incident_id"], r["page_of"]) for r in rows} == {
            (i["incident_id"], first_of_run_1) for i in folded
        }
        shown = [r for r in outbox(collector, "all") if r["status"] == "folded"]  # the CLI's
        assert {(r["incident_id"], r["page_of"]) for r in shown} == {
            (r["incident_id"], r["page_of"]) for r in rows
        }

        for incident in [*found, budget]:
            api(collector, "POST", f"/v1/incidents/{incident['incident_id']}/resolve", json={})
        eventually(lambda: len(pagerduty.bodies()) >= 5, what="one resolve per page")
        time.sleep(1.0)  # nothing more comes
        actions = [(b["event_action"], b["dedup_key"]) for b in pagerduty.bodies()]
        resolves = [key for action, key in actions if action == "resolve"]
        assert sorted(resolves) == sorted({key for _, key in actions})
        assert len(actions) == 5


def test_nothing_is_lost_when_the_pager_is_down_across_a_restart(tmp_path: Path):
    opsgenie = FakeOpsgenie(api_key="og-key")
    opsgenie.stop()  # down: connection refused
    receiver = {"name": "og", "type": "opsgenie", "url": opsgenie.url, "api_key": "og-key"}
    settings = paging(receiver, retry_max_s=0.5)
    try:
        with run_collector(tmp_path / "data", **settings) as collector:
            incident = a_loop(collector)
            eventually(
                lambda: [r for r in outbox(collector, "pending") if r["attempts"] >= 2],
                what="the trigger retried while Opsgenie is down",
            )
        opsgenie.start()
        with run_collector(tmp_path / "data", **settings) as collector:
            created = eventually(lambda: opsgenie.bodies("/v2/alerts"), what="the create")
            assert created[0]["alias"] == incident["fingerprint"]
            assert created[0]["priority"] == "P2"
            assert len(created[0]["message"]) <= 130
            api(collector, "POST", f"/v1/incidents/{incident['incident_id']}/ack", json={})
            api(collector, "POST", f"/v1/incidents/{incident['incident_id']}/resolve", json={})
            eventually(lambda: opsgenie.bodies("/close"), what="the close")
            paths = [a["path"] for a in opsgenie.accepted]
            alias = incident["fingerprint"]
            assert paths == [
                "/v2/alerts",
                f"/v2/alerts/{alias}/acknowledge?identifierType=alias",
                f"/v2/alerts/{alias}/close?identifierType=alias",
            ]
            assert outbox(collector, "unsettled") == []
    finally:
        opsgenie.close()


class HangingReceiver(FakeReceiver):
    """Takes each request in, and while ``hang`` is set never answers (the answer is lost)."""

    hang = True

    async def _handle(self, request):
        if self.hang:
            self.requests.append({"headers": dict(request.headers), "body": await request.json()})
            while self.hang:
                await asyncio.sleep(0.05)
            return web.Response(status=503)
        return await super()._handle(request)


def test_a_page_in_flight_at_a_stop_is_sent_again_with_the_same_idempotency_key(tmp_path):
    """Issue 11, hole 9: the receiver got the trigger, the collector died before the answer; after
    the restart the outbox sends it again, and the key lets the receiver drop the repeat."""
    hook = HangingReceiver()
    settings = paging({"name": "hook", "type": "webhook", "url": hook.url, "timeout_s": 60})
    try:
        with run_collector(tmp_path / "data", **settings) as collector:
            api(collector, "POST", "/v1/alerts/test", json={"route": "default"})
            [lost] = eventually(lambda: hook.requests, what="the trigger reaching the receiver")
        hook.hang = False
        with run_collector(tmp_path / "data", **settings) as collector:
            eventually(lambda: len(hook.accepted) >= 2, what="the trigger again, then the resolve")
        trigger, resolve = hook.accepted[:2]
        assert (trigger["body"]["action"], resolve["body"]["action"]) == ("trigger", "resolve")
        key = lost["headers"]["Idempotency-Key"]
        assert trigger["headers"]["Idempotency-Key"] == key == trigger["body"]["idempotency_key"]
        assert lost["body"]["idempotency_key"] == key
        assert resolve["headers"]["Idempotency-Key"] not in ("", key)
    finally:
        hook.hang = False
        hook.close()


def test_throttling_and_5xx_are_retried_honouring_retry_after(collector_factory):
    """The retry rules over real HTTP (their timing on a fake clock: test_paging_timeline.py)."""
    opsgenie = FakeOpsgenie(api_key="og-key")
    opsgenie.fail_next(
        (500, {}, "Internal Server Error"),
        (429, {"Retry-After": "1"}, '{"message": "Too many requests"}'),
        (503, {}, "Service Unavailable"),
    )
    receiver = {"name": "og", "type": "opsgenie", "url": opsgenie.url, "api_key": "og-key",
                "priorities": {"SEV2": "P4"}}  # fmt: skip
    try:
        with collector_factory(**paging(receiver)) as collector:
            incident = a_loop(collector)
            [created] = eventually(lambda: opsgenie.bodies("/v2/alerts"), what="the create")
            assert created["priority"] == "P4"
            assert "Blast radius" in created["description"]
            assert [r["status"] for r in opsgenie.requests] == [500, 429, 503, 202]
            after_429 = opsgenie.requests[2]["at"] - opsgenie.requests[1]["at"]
            assert after_429 >= 0.9  # Retry-After: 1 is honoured (a lower bound, not a race)
            [row] = [r for r in outbox(collector) if r["incident_id"] == incident["incident_id"]]
            assert (row["status"], row["attempts"], row["action"]) == ("sent", 4, "trigger")
            metrics = requests.get(f"{collector.api_url}/metrics").text
            for outcome, count in (("retry", 3), ("sent", 1)):
                sample = "agentwatch_page_attempts_total"
                sample += f'{{action="trigger",outcome="{outcome}",receiver="og"}} {count:.1f}'
                assert sample in metrics
    finally:
        opsgenie.close()


def test_slack_gets_a_readable_message_and_a_bad_payload_is_permanent_and_visible(
    collector_factory,
):
    slack, broken = FakeSlack(), FakeSlack()
    broken.fail_next((400, {}, "invalid_payload"))
    receivers = (
        {"name": "slack", "type": "slack", "url": slack.url + "/services/T0/B0/x"},
        {"name": "slack-broken", "type": "slack", "url": broken.url + "/services/T0/B1/y"},
    )
    routes = [
        {"match": {"class": "semantic"}, "receiver": "slack", "continue": True},
        {"match": {"severity": ["SEV1", "SEV2"]}, "receiver": "slack-broken"},
    ]
    try:
        with collector_factory(**paging(*receivers, routes=routes)) as collector:
            incident = a_loop(collector)
            [message] = eventually(lambda: slack.bodies(), what="the Slack message")
            text = message["text"]
            for expected in ("SEV2", "semantic", "support", "session(s)", incident["trace_id"],
                             LINK.format(trace_id=incident["trace_id"])):  # fmt: skip
                assert expected in text
            [failed] = eventually(lambda: outbox(collector, "failed"), what="the Slack failure")
            assert failed["receiver"] == "slack-broken"
            assert failed["incident_id"] == incident["incident_id"]
            assert "HTTP 400" in failed["last_error"] and "invalid_payload" in failed["last_error"]
            assert len(broken.requests) == 1  # a 400 is not retried
            events = eventually(
                lambda: [e for e in timeline(collector, incident["incident_id"])
                         if e["event"] == "page_failed"],
                what="the page_failed event",
            )  # fmt: skip
            assert events[0]["actor"] == "slack-broken/slack-broken"

            shown = CliRunner().invoke(cli, ["alerts", "outbox", "--api-url", collector.api_url])
            assert shown.exit_code == 0, shown.output
            assert "failed" in shown.output and incident["incident_id"] in shown.output
            assert "HTTP 400" in shown.output
    finally:
        slack.close()
        broken.close()


def test_webhook_is_signed_and_a_test_page_goes_through_the_route(collector_factory):
    hook = FakeReceiver()
    receiver = {"name": "hook", "type": "webhook", "url": hook.url + "/agentwatch", "secret": "s3"}
    try:
        with collector_factory(**paging(receiver)) as collector:
            ran = CliRunner().invoke(
                cli, ["alerts", "test", "--route", "default", "--api-url", collector.api_url]
            )
            assert ran.exit_code == 0, ran.output
            eventually(lambda: len(hook.accepted) >= 2, what="the test trigger and resolve")
            for request in hook.accepted:
                expected = "sha256=" + hmac.new(b"s3", request["raw"], hashlib.sha256).hexdigest()
                assert request["headers"]["X-Agentwatch-Signature"] == expected
            assert [(b["action"], b["test"]) for b in hook.bodies()] == [
                ("trigger", True),
                ("resolve", True),
            ]
            unknown = CliRunner().invoke(
                cli, ["alerts", "test", "--route", "nope", "--api-url", collector.api_url]
            )
            assert unknown.exit_code != 0 and "no route 'nope'" in unknown.output
    finally:
        hook.close()


def test_an_auto_resolved_incident_sends_the_resolve(collector_factory):
    hook = FakeReceiver()
    receiver = {"name": "hook", "type": "webhook", "url": hook.url}
    try:
        with collector_factory(**paging(receiver), incident_quiet_period_s=0.5) as collector:
            a_loop(collector)
            eventually(lambda: hook.bodies(), what="the trigger")
            time.sleep(0.6)  # the quiet period; then the analyzer's tick (every 10 s) comes now
            collector.call(collector.collector.analyzer.tick())
            done = eventually(
                lambda: [b for b in hook.bodies() if b["action"] == "resolve"],
                what="the resolve after the quiet period",
            )
            assert done[0]["incident"]["status"] == "resolved"
            assert [b["action"] for b in hook.bodies()] == ["trigger", "resolve"]
    finally:
        hook.close()


def test_a_silence_mutes_pages_until_it_is_expired(collector_factory, pagerduty):
    with collector_factory(**paging(pd_receiver(pagerduty))) as collector:
        runner = CliRunner()
        url = ["--api-url", collector.api_url]
        added = runner.invoke(
            cli, ["silence", "add", "agent=support", "class=~sem.*", "--duration", "1h",
                  "--comment", "deploying", *url],
        )  # fmt: skip
        assert added.exit_code == 0, added.output
        silence_id = added.output.split()[0]
        listed = runner.invoke(cli, ["silence", "list", *url])
        assert silence_id in listed.output and "agent=support" in listed.output

        incident = a_loop(collector)
        eventually(
            lambda: [e for e in timeline(collector, incident["incident_id"])
                     if e["event"] == "page_silenced"],
            what="the page_silenced event",
        )  # fmt: skip
        assert pagerduty.requests == [] and outbox(collector) == []

        expired = runner.invoke(cli, ["silence", "expire", silence_id, *url])
        assert expired.exit_code == 0, expired.output
        [trigger] = eventually(lambda: pagerduty.bodies(), what="the page after the silence")
        assert trigger["dedup_key"] == incident["fingerprint"]
        assert "no silences" in runner.invoke(cli, ["silence", "list", *url]).output
        again = runner.invoke(cli, ["silence", "expire", silence_id, *url])
        assert again.exit_code != 0 and "expired already" in again.output


def test_silence_matchers_are_checked(collector):
    response = requests.post(
        collector.api_url + "/v1/silences",
        json={"matchers": ["colour=red"], "duration_s": 60},
        timeout=10,
    )
    assert response.status_code == 400 and "can match only on" in response.json()["error"]
    for silence_id in ("a%5Cb", "a%09b", "a%0Ab"):  # backslash, tab, newline: 500 before
        expired = requests.delete(f"{collector.api_url}/v1/silences/{silence_id}", timeout=10)
        assert expired.status_code == 404 and "no silence" in expired.json()["error"]


def test_a_silence_regex_re2_cannot_run_is_refused_and_one_stored_before_is_skipped(
    collector_factory,
):
    """Hole 7 of issue 11: silence regexes are RE2's, refused when given (API and CLI)."""
    from analyzer.incidents.model import utc_text
    from collector.store import insert_rows

    hook = FakeReceiver()
    try:
        with collector_factory(**paging({"name": "hook", "type": "webhook", "url": hook.url})) as c:
            for matcher, why in (
                (r"agent=~(a)\1", "backreferences or lookaround"),
                ("agent=~" + "a" * 1001, "longer than 1000 characters"),
            ):
                response = requests.post(
                    c.api_url + "/v1/silences", json={"matchers": [matcher], "duration_s": 60}
                )
                assert response.status_code == 400, response.text
                assert (
                    why in response.json()["error"]
                    and repr(matcher)[:30] in response.json()["error"]
                )
            ran = CliRunner().invoke(
                cli, ["silence", "add", "agent=~(?=x)", "--api-url", c.api_url]
            )
            assert ran.exit_code == 2 and "'agent=~(?=x)'" in ran.output and "RE2" in ran.output

            kept = api(
                c, "POST", "/v1/silences", json={"matchers": ["agent=~(a+)+b"], "duration_s": 60}
            )
            now = time.time_ns()
            old = {"silence_id": "sil-before-re2", "version": now, "created_by": "", "comment": "",
                   "matchers": orjson.dumps(["agent=~(?!x)"]).decode(),
                   "starts_at": utc_text(now), "ends_at": utc_text(now + 60 * 10**9)}  # fmt: skip
            c.call(c.collector.run_store(insert_rows, c.collector.store, "silences", [old]))
            c.call(c.collector.pager.load_silences())  # would raise: the pager could not start
            assert [s.silence_id for s in c.collector.pager.silences] == [kept["silence_id"]]
    finally:
        hook.close()


# --- configuration --------------------------------------------------------------------------------


def _config(route: dict, receivers: list | None = None) -> dict:
    receivers = receivers or [
        {"name": "pd", "type": "pagerduty", "routing_key": ROUTING_KEY},
        {"name": "slack", "type": "slack", "url": "https://hooks.slack.com/services/x"},
    ]
    return {"paging": {"receivers": receivers, "route": route}}


@pytest.mark.parametrize(
    ("paging_config", "message"),
    [
        (_config({"receiver": "pd", "routes": [{"receiver": "pager"}]}),
         "route.routes.0.receiver: 'pager' is not a defined receiver (defined: pd, slack)"),
        (_config({"receiver": "pd", "routes": [{"match": {"colour": "red"}}]}),
         "paging.route.routes.0.match: cannot match on 'colour'"),
        (_config({"receiver": "pd"}, [{"name": "pd", "type": "pagerduty"}]),
         "paging.receivers.0: a pagerduty receiver needs routing_key"),
        (_config({"routes": []}), "route.receiver: the root route needs a receiver"),
        (_config({"receiver": "pd", "routes": [{"receiver": "pd"}, {"receiver": "pd"}]}),
         "route.routes.1: route name 'pd' is also route.routes.0's"),
        (_config({"receiver": "pd", "routes": [{"match_re": {"agent": "(?!test-).*"}}]}),
         "paging.route.routes.0.match_re: agent: '(?!test-).*': not a regular expression RE2"
         " accepts (invalid perl operator: (?!); RE2 has no backreferences or lookaround"),
        (_config({"receiver": "pd", "match_re": {"service": "x" * 1001}}),
         "paging.route.match_re: service: 'xxx"),
    ],
)  # fmt: skip
def test_bad_paging_config_names_the_key(tmp_path, paging_config, message):
    path = tmp_path / "agentwatch.yaml"
    path.write_text(orjson.dumps(paging_config).decode())  # JSON is YAML
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)


def test_the_documented_paging_example_is_valid():
    """deploy/agentwatch.example.yaml carries the paging section commented out; uncommented, it
    loads, and routes as the README says."""
    import yaml

    from analyzer.paging.routing import build_route, match_routes

    text = (Path(__file__).parents[1] / "deploy" / "agentwatch.example.yaml").read_text()
    block = text[text.index("# paging:") :].splitlines()
    doc = yaml.safe_load("\n".join(line[2:] for line in block if line.startswith("#")))
    config = load_config(None, doc)
    root = build_route(config.paging.route)
    sev1 = {"severity": "SEV1", "class": "semantic", "service": "billing-api"}
    assert [r.name for r in match_routes(root, sev1)] == ["pagerduty-oncall", "semantic-to-am"]
    infra = {"severity": "SEV2", "class": "infrastructure", "service": "billing-api"}
    assert [r.name for r in match_routes(root, infra)] == ["opsgenie"]
    semantic = {"severity": "SEV3", "class": "semantic", "service": "support"}
    assert [r.name for r in match_routes(root, semantic)] == ["semantic-to-am"]
    rest = {"severity": "SEV3", "class": "infrastructure", "service": "support"}
    assert [(r.name, r.receiver) for r in match_routes(root, rest)] == [("default", "slack-agents")]
