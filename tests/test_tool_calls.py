"""Tool calls read from LLM output messages, for agents that send no tool spans (issue 13, point 6).

Extraction (``collector/normalize.py`` ``output_tool_calls``) per convention, through both readers;
tool steps made from it (``analyzer/tool_calls.py``) and judged by the detectors; and end to end:
the real instrumentations (bare OpenLLMetry, OpenInference, and OTel GenAI's with content capture)
driving the real ``openai`` SDK against the fake OpenAI server, with no tool spans, open loop and
out-of-scope incidents.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from analyzer.engine import Detection, default_detectors
from analyzer.session import SessionTable
from analyzer.step import Step
from analyzer.tool_calls import ToolCallSteps
from collector.normalize import (
    COLUMNS,
    MAX_OUTPUT_TOOL_ARGS_CHARS,
    MAX_OUTPUT_TOOL_CALLS,
    args_hash_of,
)
from tests.agents.fake_openai import FakeOpenAI
from tests.conftest import run_collector
from tests.otlp import request, span
from tests.test_detect_e2e import wait_for_incidents
from tests.test_native_reader import assert_native_same

ROOT = Path(__file__).resolve().parents[1]
OI_CALL = "llm.output_messages.0.message.tool_calls.{}.tool_call.function.{}"
LLM_OI = {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o"}
LLM_GENAI = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}


def stored(*spans) -> list[dict]:
    """Rows of the spans as both readers make them (the C reader must agree with the reference)."""
    body = request(*spans).SerializeToString()
    batch, rejections = assert_native_same(body)
    assert rejections.count == 0
    return [dict(zip(COLUMNS, row, strict=True)) for row in batch.rows(list(COLUMNS))]


def calls_of(row: dict) -> list[tuple[str, str]]:
    text = row["OutputToolCalls"]
    return [(c["name"], c["arguments"]) for c in orjson.loads(text)] if text else []


def output_messages(*parts: dict) -> str:
    """A ``gen_ai.output.messages`` value as the instrumentations write it."""
    return orjson.dumps(
        [{"role": "assistant", "parts": list(parts), "finish_reason": "tool_call"}]
    ).decode()


def tool_call(name, arguments) -> dict:
    return {"type": "tool_call", "id": "call_1", "name": name, "arguments": arguments}


# --- extraction, per convention -----------------------------------------------------------------


def test_openinference_output_message_tool_calls_in_order():
    attributes = {
        **LLM_OI,
        OI_CALL.format(1, "name"): "refund",  # parallel calls: the order is the model's
        OI_CALL.format(1, "arguments"): '{"order_id": 42, "amount": 5}',
        OI_CALL.format(0, "name"): "lookup_order",
        OI_CALL.format(0, "arguments"): '{"order_id": 42}',
        OI_CALL.format(0, "id"): "call_1",
    }
    [row] = stored(span("ChatCompletion", attributes))
    assert calls_of(row) == [
        ("lookup_order", '{"order_id":42}'),
        ("refund", '{"amount":5,"order_id":42}'),
    ]
    [first, _] = orjson.loads(row["OutputToolCalls"])
    assert first["args_hash"] == args_hash_of('{"order_id":42}')  # as ToolArgsHash of a tool span


def test_gen_ai_output_messages_give_the_same_call_as_a_tool_span():
    """OTel GenAI and OpenLLMetry from 0.4x: arguments are an object there, text elsewhere."""
    attributes = {
        **LLM_GENAI,
        "gen_ai.output.messages": output_messages(
            {"type": "text", "content": "Let me look."},
            tool_call("lookup_order", {"order_id": 42}),
        ),
    }
    tool_span = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "lookup_order",
        "gen_ai.tool.call.arguments": '{ "order_id" : 42 }',
    }
    llm, tool = stored(span("chat gpt-4o", attributes), span("execute_tool", tool_span))
    [call] = orjson.loads(llm["OutputToolCalls"])
    assert (call["name"], call["arguments"], call["args_hash"]) == (
        tool["ToolName"],
        tool["ToolArgs"],
        tool["ToolArgsHash"],
    )
    assert tool["OutputToolCalls"] == ""


def test_openllmetry_completion_keys_of_older_versions():
    attributes = {
        "llm.request.type": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.finish_reason": "tool_calls",
        "gen_ai.completion.0.tool_calls.0.id": "call_1",
        "gen_ai.completion.0.tool_calls.0.name": "lookup_order",
        "gen_ai.completion.0.tool_calls.0.arguments": '{"order_id": 42}',
    }
    [row] = stored(span("openai.chat", attributes))
    assert calls_of(row) == [("lookup_order", '{"order_id":42}')]


def test_strands_inference_details_event():
    details = {"gen_ai.output.messages": output_messages(tool_call("search", {"q": "refunds"}))}
    llm = span(
        "chat",
        {**LLM_GENAI, "gen_ai.usage.input_tokens": 10},
        events=[("gen_ai.client.inference.operation.details", details)],
    )
    [row] = stored(llm)
    assert calls_of(row) == [("search", '{"q":"refunds"}')]


def test_calls_in_the_input_and_on_other_spans_are_not_asked_for():
    """The previous turn's calls sit in the input messages; only an LLM span's output counts."""
    earlier = output_messages(tool_call("lookup_order", {"order_id": 1}))
    llm = {
        **LLM_GENAI,
        "gen_ai.input.messages": earlier,
        "llm.input_messages.1.message.tool_calls.0.tool_call.function.name": "lookup_order",
        "gen_ai.prompt.1.tool_calls.0.name": "lookup_order",
        "gen_ai.output.messages": output_messages({"type": "text", "content": "Shipped."}),
    }
    agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.output.messages": earlier}
    rows = stored(span("chat", llm), span("invoke_agent", agent))
    assert [row["OutputToolCalls"] for row in rows] == ["", ""]
    assert [row["StepKind"] for row in rows] == ["llm", "agent"]


@pytest.mark.parametrize(
    "attributes",
    [
        {"gen_ai.output.messages": "[{not json tool_call"},
        {"gen_ai.output.messages": '{"parts": "tool_call"}'},
        {"gen_ai.output.messages": output_messages(tool_call(7, {}), tool_call("", {}))},
        {"gen_ai.output.messages": output_messages({"type": "tool_call", "arguments": "{}"})},
        {OI_CALL.format(0, "arguments"): '{"q": 1}'},  # arguments without a name
        {"gen_ai.output.messages": '"tool_call"'},
    ],
    ids=["not-json", "not-a-list", "name-not-text", "no-name", "indexed-no-name", "a-string"],
)
def test_malformed_output_is_ignored_and_the_span_kept(attributes):
    [row] = stored(span("chat", {**LLM_GENAI, **attributes}))
    assert row["OutputToolCalls"] == ""
    assert row["StepKind"] == "llm" and row["Model"] == "gpt-4o"


def test_arguments_that_are_not_json_are_kept_as_text():
    attributes = {**LLM_OI, OI_CALL.format(0, "name"): "run", OI_CALL.format(0, "arguments"): "{x"}
    [row] = stored(span("chat", attributes))
    assert calls_of(row) == [("run", "{x")]


def test_huge_arguments_and_many_calls_are_bounded():
    big = "a" * 1_000_000
    parts = [tool_call("write_file", {"path": "f", "text": big + "1"})]
    parts.append(tool_call("write_file", {"path": "f", "text": big + "2"}))
    parts += [tool_call(f"t{i}", None) for i in range(100)]
    [row] = stored(span("chat", {**LLM_GENAI, "gen_ai.output.messages": output_messages(*parts)}))
    calls = orjson.loads(row["OutputToolCalls"])
    assert len(calls) == MAX_OUTPUT_TOOL_CALLS
    first, second = calls[:2]
    assert len(first["arguments"]) == len(second["arguments"]) == MAX_OUTPUT_TOOL_ARGS_CHARS
    assert first["arguments"] == second["arguments"]  # the kept text is the same ...
    assert first["args_hash"] != second["args_hash"]  # ... the calls are not: hashed whole
    assert calls[2] == {"name": "t0", "arguments": "", "args_hash": 0}
    assert len(row["OutputToolCalls"]) < 3 * MAX_OUTPUT_TOOL_ARGS_CHARS + 100 * 64


# --- tool steps from the calls, and the detectors -----------------------------------------------


def llm_step(t: int, calls: list, service: str = "svc", session: str = "s1") -> Step:
    text = orjson.dumps(
        [{"name": n, "arguments": a, "args_hash": args_hash_of(a)} for n, a in calls]
    ).decode()
    return Step(t, 5, "acme", service, "support", session, "u1", "t1", f"llm{t}", "", "llm",
                model="gpt-4o", output_tool_calls=text)  # fmt: skip


def tool_step(t: int, service: str = "svc") -> Step:
    return Step(t, 1, "acme", service, "support", "s1", "u1", "t1", f"tool{t}", "", "tool",
                tool="lookup_order", tool_args='{"order_id":42}',
                args_hash=args_hash_of('{"order_id":42}'))  # fmt: skip


def test_calls_become_tool_steps_until_the_service_sends_tool_spans():
    expand = ToolCallSteps()
    asked = llm_step(1, [("lookup_order", '{"order_id":42}'), ("search", "")])
    steps = expand([asked])
    assert [(s.kind, s.tool, s.span_id, s.time_ns) for s in steps] == [
        ("llm", "", "llm1", 1),
        ("tool", "lookup_order", "llm1", 6),  # at the end of the LLM call that asked for it
        ("tool", "search", "llm1", 6),
    ]
    made = steps[1]
    assert (made.args_hash, made.result_hash, made.status, made.cost_usd, made.model) == (
        args_hash_of('{"order_id":42}'), 0, "Unset", 0.0, "",
    )  # fmt: skip
    # a real tool span from the service, even later in the same batch: no more made steps for it
    assert [s.kind for s in expand([llm_step(2, [("search", "")]), tool_step(3)])] == [
        "llm",
        "tool",
    ]
    assert len(expand([llm_step(4, [("search", "")])])) == 1
    assert len(expand([llm_step(5, [("search", "")], service="other")])) == 2  # per service


def test_malformed_calls_make_no_steps():
    expand = ToolCallSteps()
    for text in ("not json", "{}", '[1, {"name": 2}, {"arguments": "{}"}]'):
        step = llm_step(1, [])
        step.output_tool_calls = text
        assert expand([step]) == [step]


def detection() -> Detection:
    return Detection(default_detectors(), SessionTable())


def findings_of(detection: Detection, steps: list[Step]) -> list:
    return [f for f in detection.observe(steps, now=10**18) if f.detector == "loop"]


def test_the_same_call_asked_for_again_and_again_is_a_loop():
    steps = [llm_step(t, [("lookup_order", '{"order_id":42}')]) for t in range(1, 7)]
    [finding] = findings_of(detection(), steps)
    assert (finding.kind, finding.step.span_id, finding.step.tool) == (
        "repeated_call",
        "llm4",  # the fourth identical call, back to back
        "lookup_order",
    )
    assert finding.evidence[0]["outcome"] == "not recorded"


def test_with_no_result_known_another_call_in_between_is_progress():
    """The loop rule for calls without an outcome: only back-to-back identical calls count."""
    steps = []
    for t in range(1, 12, 2):
        steps.append(llm_step(t, [("run_tests", "")]))
        steps.append(llm_step(t + 1, [("edit_file", f'{{"line":{t}}}')]))
    assert findings_of(detection(), steps) == []


def test_a_service_with_tool_spans_is_judged_on_them_alone():
    asked = [llm_step(t, [("lookup_order", '{"order_id":42}')]) for t in range(1, 7)]
    real = [tool_step(t) for t in range(1, 3)]
    # two real calls: no loop from them, and the six asked-for calls are not counted again
    assert findings_of(detection(), real + asked) == []


def test_tool_spans_arriving_an_export_later_double_count_the_first_calls():
    """The double count the rule allows (analyzer/tool_calls.py): calls made into steps before
    the service's first tool span arrived are counted again by their tool spans."""
    detect = detection()
    asked = [llm_step(t, [("lookup_order", '{"order_id":42}')]) for t in range(1, 4)]
    assert findings_of(detect, asked) == []  # three asked-for calls: one short of a loop
    [finding] = findings_of(detect, [tool_step(4)])  # the first call's own span, later
    assert finding.step.span_id == "tool4"


# --- end to end: real instrumentations, real openai SDK, no tool spans ---------------------------

POLICY = """
version: 1
agents:
  - name: scoped
    match: {service: "scoped-*"}
    allowed_tools: [lookup_order, search_docs]
"""


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    path = tmp_path_factory.mktemp("tool-calls")
    (path / "policy.yaml").write_text(POLICY)
    with run_collector(path / "data", policy_file=path / "policy.yaml") as running:
        yield running


@pytest.fixture(scope="module")
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.close()


GENAI_CONTENT = {
    "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
}


def run_agent(collector, fake_openai, convention: str, *extra: str, session: str = "") -> str:
    """The support agent with LLM spans only (no tool spans); returns its session id."""
    session = session or f"sess-{uuid.uuid4().hex[:12]}"
    cmd = [
        sys.executable, "-m", "tests.agents.support_agent", "--convention", convention,
        "--endpoint", collector.grpc_endpoint, "--openai-base-url", fake_openai.base_url,
        "--session", session, "--no-tool-spans", *extra,
    ]  # fmt: skip
    # the OTel GenAI instrumentation writes gen_ai.output.messages when asked to keep content
    env = {**os.environ, **GENAI_CONTENT} if convention == "otel_genai" else None
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return session


@pytest.mark.parametrize("convention", ["openllmetry", "openinference", "otel_genai"])
def test_a_model_asking_for_the_same_call_again_and_again_opens_a_loop(
    collector, fake_openai, convention
):
    service = f"loop-{convention}"  # an incident per service: one each
    session = run_agent(
        collector, fake_openai, convention, "--model", "gpt-4o-loop", "--turns", "5",
        "--service", service,
    )  # fmt: skip
    rows = collector.wait_for_rows(
        "SELECT SpanId, StepKind, OutputToolCalls FROM agent_spans"
        f" WHERE SessionId = '{session}' AND StepKind != 'agent' ORDER BY Timestamp",
        6,
    )
    assert [r["StepKind"] for r in rows] == ["llm"] * 6  # no tool spans at all
    [call] = orjson.loads(rows[0]["OutputToolCalls"])  # stored, as the model asked
    assert (call["name"], call["arguments"]) == ("lookup_order", '{"order_id":42}')

    [incident] = wait_for_incidents(collector, f"detector = 'loop' AND session_id = '{session}'")
    assert (incident["kind"], incident["class"]) == ("repeated_call", "semantic")
    assert incident["span_id"] == rows[3]["SpanId"]  # the LLM call asking for the fourth time
    assert (incident["agent"], incident["service"]) == ("support", service)


@pytest.mark.parametrize("convention", ["openllmetry", "openinference"])
def test_a_model_asking_for_a_tool_outside_the_policy_opens_out_of_scope(
    collector, fake_openai, convention
):
    service = f"scoped-{convention}"
    session = run_agent(
        collector, fake_openai, convention, "--service", service, "--tool", "delete_account"
    )
    where = f"detector = 'out_of_scope_tool' AND session_id = '{session}'"
    [incident] = wait_for_incidents(collector, where)
    assert incident["kind"] == "unlisted_tool"
    assert "delete_account" in incident["title"]
    [llm] = collector.query(
        "SELECT SpanId FROM agent_spans WHERE SessionId = {s:String} AND StepKind = 'llm'"
        " ORDER BY Timestamp LIMIT 1",
        {"s": session},
    )
    assert incident["span_id"] == llm["SpanId"]


def test_an_allowed_tool_asked_for_once_opens_nothing(collector, fake_openai):
    session = run_agent(collector, fake_openai, "openllmetry", "--service", "scoped-agent")
    collector.wait_for_rows(f"SELECT 1 FROM agent_spans WHERE SessionId = '{session}'", 3)
    assert wait_for_incidents(collector, f"session_id = '{session}'", timeout_s=2.0) == []
