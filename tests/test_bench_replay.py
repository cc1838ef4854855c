"""The replay benchmark's converter (bench/replay): trajectory -> spans, on a tiny synthetic run.
No collector and no network: bench/replay/__main__.py is exercised by running it (bench/README)."""

from __future__ import annotations

import json

import pytest

from bench.replay.convert import convert, spans_as_dicts
from bench.replay.datasets import load
from bench.replay.model import Run, Step, derive_labels
from bench.replay.send import _request, plan

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def _run(repeats: int = 2, error: str = "") -> Run:
    steps = [
        Step(
            "llm",
            0.0,
            1.5,
            model="gpt-4o",
            input_tokens=1200,
            output_tokens=40,
            finish_reason="tool_calls",
            output_text="",
        )
    ]
    t = 1.5
    for _ in range(repeats):
        steps.append(
            Step(
                "tool",
                t,
                t + 0.25,
                tool="get_user",
                call_id="c1",
                arguments='{"id":"u1"}',
                result='{"name":"Mia"}',
                error=error,
            )
        )
        t += 0.25
    steps.append(
        Step(
            "llm",
            t,
            t + 2.0,
            model="gpt-4o",
            input_tokens=1300,
            output_tokens=60,
            output_text="done",
            finish_reason="stop",
        )
    )
    return Run(
        dataset="synthetic",
        session_id="sess-1",
        service="svc",
        agent="helper",
        provider="openai",
        model="gpt-4o",
        steps=steps,
        user_id="u1",
    )


def test_genai_spans_names_attributes_timing():
    spans = spans_as_dicts(convert(_run(), "genai", T0))
    assert [s["name"] for s in spans] == [
        "chat gpt-4o",
        "execute_tool get_user",
        "execute_tool get_user",
        "chat gpt-4o",
        "invoke_agent helper",
    ]
    root = spans[-1]
    assert root["attributes"]["gen_ai.conversation.id"] == "sess-1"
    assert root["attributes"]["gen_ai.agent.name"] == "helper"
    assert root["attributes"]["user.id"] == "u1"
    assert root["start_ns"] == T0 and root["end_ns"] == T0 + 4 * NS
    # the session is on the root only, as the official GenAI instrumentation writes it
    assert all("gen_ai.conversation.id" not in s["attributes"] for s in spans[:-1])
    chat = spans[0]
    assert chat["attributes"]["gen_ai.request.model"] == "gpt-4o"
    assert chat["attributes"]["gen_ai.usage.input_tokens"] == 1200
    assert chat["attributes"]["gen_ai.usage.output_tokens"] == 40
    assert chat["attributes"]["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert chat["start_ns"] == T0 and chat["end_ns"] == T0 + int(1.5 * NS)
    tool = spans[1]
    assert tool["attributes"]["gen_ai.tool.name"] == "get_user"
    assert json.loads(tool["attributes"]["gen_ai.tool.call.arguments"]) == {"id": "u1"}
    assert tool["attributes"]["gen_ai.tool.call.result"] == '{"name":"Mia"}'
    assert tool["start_ns"] == T0 + int(1.5 * NS)
    # one trace, children parented to the root, emitted in end-time order (root last)
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}
    assert all(s["parent_span_id"] == root["span_id"] for s in spans[:-1])
    assert [s["emit_s"] for s in spans] == sorted(s["emit_s"] for s in spans)


def test_openinference_spans():
    spans = spans_as_dicts(convert(_run(error="Error: user not found"), "openinference", T0))
    kinds = [s["attributes"]["openinference.span.kind"] for s in spans]
    assert kinds == ["LLM", "TOOL", "TOOL", "LLM", "AGENT"]
    assert all(s["attributes"]["session.id"] == "sess-1" for s in spans)
    llm = spans[0]["attributes"]
    assert llm["llm.model_name"] == "gpt-4o"
    assert (llm["llm.token_count.prompt"], llm["llm.token_count.completion"]) == (1200, 40)
    tool = spans[1]
    assert tool["attributes"]["tool.name"] == "get_user"
    assert tool["attributes"]["input.value"] == '{"id":"u1"}'
    assert tool["attributes"]["output.value"] == '{"name":"Mia"}'
    assert tool["status"] == "STATUS_CODE_ERROR" and tool["events"] == ["exception"]


def test_error_status_in_genai():
    spans = spans_as_dicts(convert(_run(error="Error: user not found"), "genai", T0))
    assert spans[1]["status"] == "STATUS_CODE_ERROR"
    assert spans[1]["status_message"] == "Error: user not found"
    assert spans[1]["attributes"]["error.type"] == "_OTHER"


def test_derived_loop_label_needs_four_identical_calls_with_the_same_result():
    assert derive_labels(_run(repeats=3)) == set()
    assert derive_labels(_run(repeats=4)) == {"loop"}


def test_derived_loop_label_counts_a_repeated_cycle_of_calls():
    """A B A B ... with the same results is no progress too (AutoCodeRover re-issues a pair of
    searches that find nothing); with a new result in the cycle it is progress."""

    def cycle(rounds: int, results: list[str]) -> Run:
        run = _run(repeats=0)
        calls = []
        for k in range(rounds):
            calls.append(Step("tool", k, k + 0.1, tool="search_method", arguments='{"m":"f"}',
                              result="Could not find method f"))  # fmt: skip
            calls.append(Step("tool", k + 0.1, k + 0.2, tool="search_class", arguments='{"c":"C"}',
                              result=results[k % len(results)]))  # fmt: skip
        run.steps[1:1] = calls
        return run

    assert derive_labels(cycle(3, ["Could not find class C"])) == set()
    assert derive_labels(cycle(4, ["Could not find class C"])) == {"loop"}
    assert derive_labels(cycle(4, ["Found C in a.py", "Found C in b.py"])) == set()


def test_plan_schedules_by_event_time_and_request_groups_by_convention():
    runs = [_run(), _run()]
    runs[1].session_id = "sess-2"
    p = plan(runs, ["genai", "openinference"], T0, mean_gap_s=0.0)
    assert p.conventions == {"sess-1": "genai", "sess-2": "openinference"}
    assert len(p.events) == 10 and p.events[-1].at_s == pytest.approx(4.0)
    request = _request(p.events)
    assert sorted(ss.scope.name for rs in request.resource_spans for ss in rs.scope_spans) == [
        "openinference.instrumentation.openai",
        "opentelemetry.instrumentation.openai_v2",
    ]
    # compressed: durations scale, the send schedule does not
    q = plan(runs, ["genai"], T0, mean_gap_s=0.0, time_scale=0.1)
    root = [e for e in q.events if e.span.name.startswith("invoke_agent")][0]
    assert root.span.end_time_unix_nano - root.span.start_time_unix_nano == int(0.4 * NS)
    assert root.at_s == pytest.approx(4.0)


def test_tau_bench_loader(tmp_path):
    traj = [
        {"role": "system", "content": "policy " * 100},
        {"role": "user", "content": "hi, I am u1"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_user_details", "arguments": '{"user_id": "u1"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_a",
            "name": "get_user_details",
            "content": "Error: user not found",
        },
        {"role": "assistant", "content": "Sorry, I cannot find you."},
    ]
    path = tmp_path / "gpt-4o-airline.json"
    path.write_text(
        json.dumps(
            [
                {
                    "task_id": 7,
                    "reward": 0.0,
                    "trial": 0,
                    "traj": traj,
                    "info": {"task": {"user_id": "u1"}},
                }
            ]
        )
    )
    (run,) = load(tmp_path)
    assert run.session_id == "tau-airline-gpt-4o-t7-r0" and run.user_id == "u1"
    assert [s.kind for s in run.steps] == ["llm", "tool", "llm"]
    tool = run.steps[1]
    assert tool.tool == "get_user_details" and tool.arguments == '{"user_id":"u1"}'
    assert tool.error == "Error: user not found"
    assert run.steps[0].tokens_estimated and run.steps[0].input_tokens > 100
    assert all(a.end_s <= b.start_s for a, b in zip(run.steps, run.steps[1:], strict=False))


@pytest.mark.parametrize("convention", ["genai", "openinference"])
def test_collector_reads_the_converted_spans(convention):
    """The collector's own normaliser finds the step kinds, tools, tokens and session."""
    from collector.normalize import COLUMNS, Normalizer

    p = plan([_run(error="Error: user not found")], [convention], T0, mean_gap_s=0.0)
    batch, _ = Normalizer().normalize(_request(p.events))
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in batch.rows(list(COLUMNS))]
    by_kind = {}
    for row in rows:
        by_kind.setdefault(row["StepKind"], []).append(row)
    assert {k: len(v) for k, v in by_kind.items()} == {"llm": 2, "tool": 2, "agent": 1}
    assert by_kind["llm"][0]["InputTokens"] == 1200 and by_kind["llm"][0]["Model"] == "gpt-4o"
    assert by_kind["tool"][0]["ToolName"] == "get_user"
    assert by_kind["tool"][0]["StatusCode"] == "Error"
    assert by_kind["agent"][0]["SessionId"] == "sess-1"
    assert by_kind["agent"][0]["AgentName"] == "helper"
    if convention == "openinference":
        assert all(row["SessionId"] == "sess-1" for row in rows)


def test_score_per_detector():
    from bench.replay.score import collect, score, table

    looping = _run(repeats=4)
    looping.session_id = "sess-loop"
    looping.labels = derive_labels(looping)
    runs = [_run(), looping]
    trace_of_normal = "ab" * 16

    def sql(query):
        if "FROM incidents_current" in query:
            return [
                {"incident_id": "inc-1", "detector": "loop", "kind": "repeated_call",
                 "severity": "SEV2", "title": "t", "session_id": "", "trace_id": "", "service": "s"},
                {"incident_id": "inc-2", "detector": "token_ratio", "kind": "ratio_anomaly",
                 "severity": "SEV2", "title": "t", "session_id": "", "trace_id": "", "service": "s"},
            ]  # fmt: skip
        return [
            {"incident_id": "inc-1", "event": "opened", "session_id": "sess-loop", "trace_id": ""},
            {"incident_id": "inc-2", "event": "opened", "session_id": "", "trace_id": trace_of_normal},
        ]  # fmt: skip

    found = collect(sql, {trace_of_normal: "sess-1"}, {"sess-1", "sess-loop"})
    rows = {r["detector"]: r for r in score(runs, found, ["loop", "token_ratio"])}
    assert rows["loop"]["recall"] == 1.0 and rows["loop"]["precision"] == 1.0
    assert rows["loop"]["per_100_normal"] == 0.0
    assert rows["token_ratio"]["per_100_normal"] == 100.0  # attributed through the trace id
    assert "token_ratio" in table(list(rows.values()))


def test_auto_code_rover_loader_keeps_real_times_and_token_usage(tmp_path):
    task = tmp_path / "acr-run-1" / "applicable_patch" / "demo__demo-1_2024-04-06_13-19-51"
    task.mkdir(parents=True)
    found = ("Found 1 classes with name Pool in the codebase.\nSearch result 1: <file>pool.py</file>"
             " <code>raise OSError('Connection reset by peer')</code>")  # fmt: skip
    log = [
        "2024-04-06 13:19:51 ========== Running task demo__demo-1 (relative counter: 1/300) ==========",
        "2024-04-06 13:21:15 [32mCurrent message thread:[0m",
        "[{'role': 'system',",
        "  'content': 'You are a software developer.'}]",
        "2024-04-06 13:21:24 Model API request cost info: input_tokens=491, output_tokens=66, cost=0.01",
        "2024-04-06 13:21:24 Raw model response: ChatCompletionMessage(content='{\"API_calls\": "
        "[\"search_class(\\\\\"Pool\\\\\")\"]}', role='assistant', function_call=None, tool_calls=None)",
        "2024-04-06 13:21:26 Result of dispatch_intent: " + repr((found, "Found Pool", True)),
        "2024-04-06 13:21:40 Model API request cost info: input_tokens=1585, output_tokens=566, cost=0.03",
        "2024-04-06 13:21:40 Raw model response: ChatCompletionMessage(content='# modification 1', role='assistant')",
        "2024-04-06 13:21:40 [Validation] Applied patch. Going to run test suite.",
        "2024-04-06 13:21:40 Running command: pytest tests/test_pool.py",
        "2024-04-06 13:21:43 [Run test-suite] Eval status: {'test_pool': 'PASSED'}",
        "2024-04-06 13:21:43 [Validation] Finishing. Result is True.",
        "2024-04-06 13:21:44 Result of dispatch_intent: ('Extracted a patch.', 'Extracted a patch.', True)",
        "2024-04-06 13:21:44 Task demo__demo-1 completed successfully.",
    ]  # fmt: skip
    (task / "info.log").write_text("\n".join(log) + "\n")
    (task / "cost.json").write_text(json.dumps({"model": "gpt-4-0125-preview", "total_cost": 0.04}))
    sequence = [
        {"func_name": "search_class", "arguments": {"class_name": "Pool"}, "call_ok": True},
        {"func_name": "write_patch", "arguments": {}, "call_ok": True},
    ]
    (task / "tool_call_sequence.json").write_text(json.dumps(sequence))

    (run,) = load(tmp_path)
    assert run.session_id == "acr-run-1-demo__demo-1" and run.timed
    assert run.model == "gpt-4-0125-preview" and run.meta["outcome"] == "applicable_patch"
    assert [(s.kind, s.start_s, s.end_s) for s in run.steps] == [
        ("llm", 84.0, 93.0),  # from the log line before it to its usage line
        ("tool", 93.0, 95.0),
        ("llm", 95.0, 109.0),
        ("tool", 109.0, 112.0),  # a command lasts until the next log line
        ("tool", 112.0, 113.0),
    ]
    first, search, second, command, patch = run.steps
    assert (first.input_tokens, first.output_tokens) == (491, 66) and not first.tokens_estimated
    assert first.output_text == '{"API_calls": ["search_class(\\"Pool\\")"]}'
    assert (second.input_tokens, second.output_tokens) == (1585, 566)
    assert search.tool == "search_class" and search.arguments == '{"class_name":"Pool"}'
    assert search.result == found and search.error == ""
    assert (
        command.tool == "run_command"
        and command.arguments == '{"command":"pytest tests/test_pool.py"}'
    )
    assert command.result == "[Run test-suite] Eval status: {'test_pool': 'PASSED'}"
    assert patch.tool == "write_patch" and patch.result == "Extracted a patch."
    # "Connection reset by peer" in searched source code is content, not an infrastructure failure
    assert run.labels == set()
    assert derive_labels(run) == {"infrastructure"}
