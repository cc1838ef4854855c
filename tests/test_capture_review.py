"""Regression cases and post-incident reviews (issue 14, points 3 and 5), as on-call uses them: a
real collector with a policy file, real loop incidents from the OTel SDK, capture from the CLI,
the API and the console (headless Chromium), the export shapes, and the review's policy diff.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import orjson
import pytest
import requests
import yaml
from click.testing import CliRunner

from agentwatch.cli.main import main as cli
from analyzer.incidents.cases import build_case, triggering_input
from analyzer.incidents.review import QUESTIONS, Facts, review
from analyzer.policy import AgentPolicy, load_policy, parse_policy
from tests.conftest import run_collector
from tests.console.agent import QUESTION, run_support_agent
from tests.test_console import (
    TENANTS,
    TOKEN,
    browser,  # noqa: F401 (a fixture)
    log_in,
    shot,
)
from tests.test_console import text_after_navigation as after_navigation
from tests.test_detect_e2e import wait_for_incidents

README = Path(__file__).resolve().parents[1] / "README.md"
POLICY = """\
# the support team's guardrails
version: 1
defaults:
  actions: {SEV1: pause_session}   # nothing automatic below SEV1
agents:
  - name: support
    match: {service: "support-*"}
    allowed_tools: [lookup_order]  # what the agent may call
  - name: others
    match: {service: "*"}
"""
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A collector with an API token, tenants and a policy file; loop incidents come per test."""
    directory = tmp_path_factory.mktemp("capture")
    policy = directory / "policy.yaml"
    policy.write_text(POLICY)
    with run_collector(
        directory / "data", api_token=TOKEN, tenants=TENANTS, policy_file=policy
    ) as collector:
        collector.policy_path = policy
        yield collector


_ORDERS = iter(range(100, 1000))


def loop_incident(collector, session: str, order: int | None = None) -> tuple[dict, dict]:
    """The first loop incident of a support session that looks up 4 orders, then one order eight
    times (42: not found); and the span ids the agent exported. Loop incidents still open are
    resolved first: the same loop in another session would be folded into them."""
    order = next(_ORDERS) if order is None else order
    for earlier in collector.query(
        "SELECT incident_id FROM incidents_current WHERE detector = 'loop' AND status != 'resolved'"
    ):  # the same loop again would update the open incident: resolve it first
        url = f"{collector.api_url}/v1/incidents/{earlier['incident_id']}/resolve"
        requests.post(url, json={"reason": "next test"}, headers=ADMIN).raise_for_status()
    span_ids = run_support_agent(
        collector, session, f"user-{session}", [1, 2, 3, 4] + [order] * 8, token=TOKEN
    )
    incidents = wait_for_incidents(collector, f"detector = 'loop' AND session_id = '{session}'")
    assert incidents, f"no loop incident for session {session}"
    return min(incidents, key=lambda i: (i["first_seen"], i["incident_id"])), span_ids


def run_cli(collector, *args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--api-url", collector.api_url, "--token", TOKEN])
    assert result.exit_code == 0, result.output
    return result.output


def stored_case(collector, incident_id: str) -> dict:
    [row] = collector.query(
        "SELECT * FROM regression_cases FINAL WHERE incident_id = {id:String}", {"id": incident_id}
    )
    return row


# --- capture -----------------------------------------------------------------------------------


def test_the_cli_captures_the_users_question_and_the_off_rails_call(store):
    incident, span_ids = loop_incident(store, "cap-cli", 42)
    out = run_cli(store, "incidents", "capture", incident["incident_id"],
                  "--expected", "say order 42 does not exist and stop", "--actor", "bob")  # fmt: skip
    assert f"{incident['incident_id']}: regression case captured by bob" in out
    assert "off rails lookup_order" in out

    case = stored_case(store, incident["incident_id"])
    # the first user message of the run, from the LLM turn's gen_ai.input.messages
    assert (case["input"], case["input_source"]) == (QUESTION, "gen_ai.input.messages")
    assert case["input_span_id"] == span_ids["llm"][0]
    assert case["step_span_id"] == incident["span_id"] and case["step_tool"] == "lookup_order"
    assert orjson.loads(case["step_arguments"]) == {"order_id": 42}
    assert case["step_error"] == "OrderNotFound"
    assert (case["expected"], case["captured_by"]) == (
        "say order 42 does not exist and stop",
        "bob",
    )
    assert (case["tenant"], case["service"], case["agent"], case["session_id"]) == (
        "default", "support-svc", "support", "cap-cli",
    )  # fmt: skip
    # the trajectory from the root span to the off-rails step, and at most five steps after it
    steps = orjson.loads(case["trajectory"])
    spans = [s["span_id"] for s in steps]
    off = spans.index(incident["span_id"])
    assert steps[0]["kind"] == "agent" and len(spans) - off - 1 == 5
    tools = [s["span_id"] for s in steps if s["kind"] == "tool"]
    upto = span_ids["tool"].index(incident["span_id"]) + 1
    assert tools[:upto] == span_ids["tool"][:upto]  # every call up to it, in order
    assert steps[off]["error"] == "OrderNotFound" and int(case["trajectory_steps"]) == len(steps)

    # capturing again replaces the case: one per incident
    run_cli(store, "incidents", "capture", incident["incident_id"], "--expected", "stop at once")
    assert stored_case(store, incident["incident_id"])["expected"] == "stop at once"


def test_capturing_over_the_api_needs_the_admin_token_and_an_expected_behaviour(store):
    incident, _ = loop_incident(store, "cap-api")
    url = f"{store.api_url}/v1/incidents/{incident['incident_id']}/case"
    body = {"expected": "hand over to a person", "actor": "carol"}
    assert requests.post(url, json=body).status_code == 401
    assert (
        requests.post(url, json=body, headers={"Authorization": "Bearer acme-read"}).status_code
        == 403
    )
    assert requests.get(url, headers=ADMIN).status_code == 404  # nothing captured yet
    empty = requests.post(url, json={"expected": "  "}, headers=ADMIN)
    assert empty.status_code == 400 and "expected" in empty.json()["error"]
    unknown = f"{store.api_url}/v1/incidents/inc-000000000000/case"
    assert requests.post(unknown, json=body, headers=ADMIN).status_code == 404

    created = requests.post(url, json=body, headers=ADMIN)
    assert created.status_code == 201
    case = created.json()
    assert case["input"] == QUESTION and case["captured_by"] == "carol"
    assert case["captured_at"].endswith("Z") and isinstance(case["trajectory"], list)
    assert requests.get(url, headers=ADMIN).json()["expected"] == "hand over to a person"
    # another tenant's reader does not see the default tenant's incident, nor its case
    beta = {"Authorization": "Bearer beta-read"}
    assert requests.get(url, headers=beta).status_code == 404
    cases = requests.get(f"{store.api_url}/v1/cases", headers=beta)
    assert cases.status_code == 200 and cases.text == ""


def test_cases_export_as_json_lines_and_as_langfuse_dataset_items(store):
    incident, _ = loop_incident(store, "cap-export")
    run_cli(store, "incidents", "capture", incident["incident_id"], "--expected", "stop")
    plain = [orjson.loads(line) for line in run_cli(store, "incidents", "cases").splitlines()]
    mine = next(c for c in plain if c["incident_id"] == incident["incident_id"])
    assert mine["input"] == QUESTION and mine["trajectory"][0]["kind"] == "agent"

    out = run_cli(store, "incidents", "cases", "--format", "langfuse", "--dataset", "support-reg")
    items = [orjson.loads(line) for line in out.splitlines()]
    item = next(i for i in items if i["id"] == incident["incident_id"])
    # the body of Langfuse's POST /api/public/dataset-items (CreateDatasetItemRequest)
    assert set(item) == {"datasetName", "id", "input", "expectedOutput", "metadata",
                         "sourceTraceId", "sourceObservationId", "status"}  # fmt: skip
    assert (item["datasetName"], item["input"], item["expectedOutput"], item["status"]) == (
        "support-reg", QUESTION, "stop", "ACTIVE",
    )  # fmt: skip
    assert item["sourceTraceId"] == incident["trace_id"] and re.fullmatch(
        "[0-9a-f]{32}", item["sourceTraceId"]
    )
    assert item["sourceObservationId"] == incident["span_id"]
    assert item["metadata"]["off_rails_step"]["tool"] == "lookup_order"
    assert item["metadata"]["detector"] == "loop" and item["metadata"]["trajectory"]


def test_the_readme_lists_incidents_closed_without_a_case(store):
    captured, _ = loop_incident(store, "closed-captured")
    run_cli(store, "incidents", "capture", captured["incident_id"], "--expected", "stop")
    run_cli(store, "incidents", "resolve", captured["incident_id"], "--reason", "fixed")
    forgotten, _ = loop_incident(store, "closed-forgotten")
    run_cli(store, "incidents", "resolve", forgotten["incident_id"], "--reason", "fixed")
    false_alarm, _ = loop_incident(store, "closed-false-alarm")
    run_cli(store, "incidents", "resolve", false_alarm["incident_id"], "--false-alarm")
    query = README.read_text().split("-- incidents closed without a regression case", 1)[1]
    query = "-- incidents closed without a regression case" + query.split("```", 1)[0]
    out = run_cli(store, "sql", query, "--format", "json")  # pasted as it is in the README
    listed = {row["incident_id"] for row in orjson.loads(out)["data"]}
    assert forgotten["incident_id"] in listed
    assert not listed & {captured["incident_id"], false_alarm["incident_id"]}


# --- the review ---------------------------------------------------------------------------------


def test_the_review_answers_five_questions_and_its_diff_applies_to_the_policy_in_use(
    store, tmp_path
):
    incident, span_ids = loop_incident(store, "review-1")
    out = run_cli(store, "incidents", "review", incident["incident_id"])
    for number, question in enumerate(QUESTIONS, 1):
        assert f"{number}. {question}" in out
    assert "Off the rails at step" in out and "lookup_order" in out
    assert "policy rule support of" in out
    assert "No containment action for loop or SEV2" in out
    assert "1 session(s), 1 user(s)" in out

    found = requests.get(
        f"{store.api_url}/v1/incidents/{incident['incident_id']}/review",
        headers={"Authorization": "Bearer acme-read"},
    )
    assert found.status_code == 404  # a tenant's reader: not its incident
    found = requests.get(
        f"{store.api_url}/v1/incidents/{incident['incident_id']}/review", headers=ADMIN
    ).json()
    assert [q["question"] for q in found["questions"]] == list(QUESTIONS)
    suggestion = found["suggestion"]
    assert suggestion["change"] == {"actions": {"loop": "pause_session"}}

    # the diff, as `patch` takes it, turns the policy in use into one that pauses the session
    # on a loop of this agent only, and keeps what the file said (comments and all)
    diff = run_cli(store, "incidents", "review", incident["incident_id"], "--format", "diff")
    assert diff == suggestion["diff"]
    path = str(store.policy_path).lstrip("/")
    assert diff.startswith(f"--- a/{path}\n+++ b/{path}\n")
    assert all(not line.startswith("-") for line in diff.splitlines()[2:])  # only additions
    copy = tmp_path / "policy.yaml"
    copy.write_text(POLICY)
    subprocess.run(["patch", "-s", str(copy)], input=diff, text=True, check=True)
    patched = copy.read_text()
    assert patched == suggestion["policy"] and "# the support team's guardrails" in patched
    before, after = load_policy(store.policy_path), load_policy(copy)
    assert before.for_agent("support-svc", "support").action_for("loop", "SEV2") == "none"
    assert after.for_agent("support-svc", "support").action_for("loop", "SEV2") == "pause_session"
    kept = after.for_agent("support-svc", "support")
    assert kept.allowed_tools == ("lookup_order",) and kept.action_for("x", "SEV1") == (
        "pause_session"
    )
    assert after.for_agent("support-svc", "triage").action_for("loop", "SEV2") == "none"
    assert after.for_agent("billing", "support") == before.for_agent("billing", "support")


def facts(detector: str, tool: str = "", policy: AgentPolicy | None = None, text=None, steps=()):
    incident = {
        "incident_id": "inc-1", "detector": detector, "kind": "k", "severity": "SEV2",
        "service": "shop", "agent": "clerk", "tool": tool, "span_id": "off", "session_id": "s1",
        "title": "t", "summary": "s", "occurrences": 1, "first_seen": "", "last_seen": "",
        "evidence": [],
    }  # fmt: skip
    resolved = policy or (parse_policy(yaml.safe_load(text)).for_agent("shop", "clerk")
                          if text else AgentPolicy())  # fmt: skip
    return Facts(incident, list(steps), len(steps), 1, 1, 0, resolved, text, "policy.yaml")


def resolved_after(found, service="shop", agent="clerk") -> AgentPolicy:
    return parse_policy(yaml.safe_load(found.suggestion.after)).for_agent(service, agent)


def test_a_tool_called_out_of_scope_becomes_consequential():
    text = "version: 1\nagents:\n- match: {service: shop}\n  allowed_tools: [search]\n"
    found = review(facts("out_of_scope_tool", "issue_refund", text=text))
    assert found.suggestion.summary == (
        "Add issue_refund to consequential_tools: its next call out of scope is SEV1, and"
        " pause_session follows."
    )
    after = resolved_after(found)
    assert after.is_consequential("issue_refund") and after.is_consequential("delete_*")
    assert after.allowed_tools == ("search",) and after.action_for("x", "SEV1") == "pause_session"
    assert found.suggestion.diff.startswith("--- a/policy.yaml\n+++ b/policy.yaml\n")


def test_a_cost_runaway_gets_a_budget_at_what_the_run_had_spent_and_no_file_gets_a_new_one():
    steps = [{"SpanId": "a", "CostUsd": 0.25, "InputTokens": 10}, {"SpanId": "off", "CostUsd": 0.5},
             {"SpanId": "later", "CostUsd": 9.0}]  # fmt: skip
    found = review(facts("cost_runaway", steps=steps))
    assert found.suggestion.change == {"budgets": {"session_cost_usd": 0.75}}
    assert found.suggestion.diff.startswith("--- /dev/null\n+++ b/policy.yaml\n")
    assert resolved_after(found).session_cost_usd == 0.75
    assert resolved_after(found, "shop", "other").session_cost_usd is None


def test_a_policy_file_broken_since_the_collector_read_it_gives_no_suggestion():
    broken = "agents: [{match: {service: shop}, bogus: 1}]\n"
    found = review(facts("loop", policy=AgentPolicy(), text=broken))
    assert found.suggestion is None and "policy.yaml does not load now" in found.answers[4][1][0]


def test_nothing_is_suggested_when_the_policy_already_contained_it():
    policy = AgentPolicy(actions={"infrastructure": "open_tool_circuit"})
    found = review(facts("infrastructure", "search", policy=policy))
    assert found.suggestion is None and "No change suggested" in found.answers[4][1][0]


def test_a_long_runs_case_keeps_the_hundred_steps_up_to_the_off_rails_step_and_five_after():
    steps = [(n, {"SpanId": f"s{n}", "output": "x" * 5000}) for n in range(1, 301)]
    incident = {"incident_id": "inc-1", "span_id": "s250"}
    case = build_case(incident, [], steps, "stop", "dave", 0)
    kept = orjson.loads(case["trajectory"])
    assert [kept[0]["n"], kept[-1]["n"], len(kept)] == [151, 255, 105]
    assert max(len(orjson.dumps(step)) for step in kept) < 3000  # each field cut to 2,000
    assert case["input"] == "" and case["step_span_id"] == "s250"


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"input.value": "cancel my plan"}, ("cancel my plan", "input.value")),
        ({"traceloop.entity.input": '{"question": "hi"}'},
         ('{"question": "hi"}', "traceloop.entity.input")),
        ({"gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "rules",
          "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "refund"},
         ("refund", "gen_ai.prompt")),
        ({"gen_ai.input.messages": '[{"role": "user", "content": "plain"}]'},
         ("plain", "gen_ai.input.messages")),
    ],
)  # fmt: skip
def test_the_triggering_input_is_read_from_each_convention(inputs, expected):
    assert triggering_input([{"SpanId": "s", "inputs": inputs}]) == (*expected, "s")


# --- in a real browser ----------------------------------------------------------------------------


def test_on_call_captures_the_case_from_the_incident_page_and_reads_the_review(store, browser):  # noqa: F811
    from selenium.webdriver.common.by import By  # lazy: with the browser fixture

    incident, _ = loop_incident(store, "cap-browser")
    log_in(browser, store)
    browser.get(f"{store.api_url}/incidents/{incident['incident_id']}#capture")
    assert browser.find_element(By.ID, "case-badge").text == "no case captured"
    assert browser.find_element(By.ID, "case-badge-top").text == "no case captured"
    form = browser.find_element(By.CSS_SELECTOR, "form.capture-form")
    form.find_element(By.NAME, "expected").send_keys("tell the user order 42 does not exist")
    form.find_element(By.CSS_SELECTOR, "button").click()
    assert after_navigation(browser, ".flash", "Captured") == "Captured as a regression case."
    section = browser.find_element(By.ID, "capture")
    assert section.find_element(By.ID, "case-badge").text == "case captured"
    assert browser.find_element(By.ID, "case-badge-top").text == "case captured"
    assert "by alice" in section.text
    assert section.find_element(By.CSS_SELECTOR, ".case-input").text == QUESTION
    assert browser.execute_script("return window.pwned") is None  # the question's markup is text
    shot(browser, "captured")
    assert stored_case(store, incident["incident_id"])["captured_by"] == "alice"

    browser.find_element(By.ID, "review-link").click()
    questions = browser.find_elements(By.CSS_SELECTOR, "li.question h2")
    assert [q.text for q in questions] == list(QUESTIONS)
    assert browser.find_element(By.ID, "case-badge").text == "case captured"
    diff = browser.find_element(By.ID, "policy-diff").text
    assert "+      loop: pause_session" in diff and "+  - name: support-svc/support after" in diff
    shot(browser, "review")
    browser.execute_script("document.getElementById('policy-diff').scrollIntoView()")
    shot(browser, "review-diff")
