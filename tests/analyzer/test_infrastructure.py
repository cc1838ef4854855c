"""Infrastructure detector timelines on a virtual clock."""

from __future__ import annotations

import sys
import uuid
from collections import deque

import pytest

from analyzer.detectors.infrastructure import (
    KEY_BYTES_MAX,
    InfrastructureDetector,
    classify,
    failure_kind,
)
from analyzer.detectors.loop import LoopDetector
from analyzer.policy import AgentPolicy
from analyzer.session import SessionTable
from analyzer.step import STEP_COLUMNS, Step, steps_from_columns
from collector.normalize import Normalizer
from tests.analyzer.timeline import SECOND, llm, run, tool
from tests.otlp import request, span


def rate_limited(t_s: float, session: str, model: str = "gpt-4o"):
    return llm(
        t_s, 1000, 0, session=session, model=model, status="Error",
        error_type="openai.RateLimitError", http_status=429,
    )  # fmt: skip


def timed_out(t_s: float, session: str = "s1"):
    return llm(t_s, 1000, 0, session=session, status="Error", error_type="httpx.ReadTimeout")


def ok(t_s: float, session: str, model: str = "gpt-4o"):
    return llm(t_s, 1000, 200, session=session, model=model)


def deep_size(obj, seen: set | None = None) -> int:
    """Bytes held by ``obj`` and everything it references (``sys.getsizeof``, recursively)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset | deque):
        size += sum(deep_size(item, seen) for item in obj)
    elif hasattr(obj, "__slots__"):
        size += sum(deep_size(getattr(obj, name), seen) for name in obj.__slots__)
    return size


# --- classification ------------------------------------------------------------------------------


def test_classification_table():
    def llm_failure(error_type, status=0):
        return failure_kind(llm(0, 1, 0, status="Error", error_type=error_type, http_status=status))

    def tool_failure(error_type, status=0):
        return failure_kind(tool(0, "crm", failed=True, http_status=status, error_type=error_type))

    assert llm_failure("openai.RateLimitError", 429) == "rate_limit"
    assert llm_failure("TooManyRequests") == "rate_limit"
    assert llm_failure("openai.APITimeoutError") == "timeout"
    assert llm_failure("408", 408) == "timeout"
    assert llm_failure("openai.InternalServerError", 500) == "provider_5xx"
    assert llm_failure("anthropic.OverloadedError", 529) == "provider_5xx"
    assert llm_failure("openai.APIConnectionError") == "provider_5xx"
    assert llm_failure("openai.AuthenticationError", 401) == "auth"
    assert llm_failure("openai.PermissionDeniedError", 403) == "auth"
    assert llm_failure("context_length_exceeded", 400) == "context_length"
    assert llm_failure("litellm.ContextWindowExceededError", 400) == "context_length"
    assert llm_failure("openai.BadRequestError", 400) is None  # message not on the Step
    assert llm_failure("_OTHER") is None
    assert tool_failure("503", 503) == "tool_backend"
    assert tool_failure("httpx.ConnectError") == "tool_backend"
    assert tool_failure("ConnectionRefusedError") == "tool_backend"
    assert tool_failure("httpx.ReadTimeout") == "timeout"
    assert tool_failure("429", 429) == "rate_limit"
    assert tool_failure("400", 400) is None  # bad arguments: the agent's misuse
    assert tool_failure("422", 422) is None
    assert tool_failure("403", 403) is None  # a tool's refusal: left to the semantic detectors
    assert tool_failure("CommandTimeoutError") == "timeout"
    assert tool_failure("ConnectionResetError") == "tool_backend"
    assert tool_failure("socket.gaierror") == "tool_backend"
    assert tool_failure("ssl.SSLCertVerificationError") == "tool_backend"
    assert tool_failure("ToolRetryError") is None  # a framework class: no cause on the Step
    assert tool_failure("_OTHER", 502) == "tool_backend"
    assert llm_failure("content_filter", 400) is None  # the provider's policy, not a failure
    causes = {
        "ConnectionRefusedError": "connection_refused",
        "httpx.ConnectError": "connection",
        "ConnectionResetError": "connection_reset",
        "socket.gaierror": "dns",
        "ssl.SSLCertVerificationError": "tls",
        "Temporary failure in name resolution": "dns",
        "connection refused": "connection_refused",
        "EXECUTION TIMED OUT": "timeout",
    }
    for error_type, cause in causes.items():
        assert classify(tool(0, "crm", failed=True, error_type=error_type))[1] == cause
    assert failure_kind(ok(0, "s1")) is None


# --- rate across sessions ------------------------------------------------------------------------


def test_a_burst_of_429s_across_8_sessions_is_sev2_rate_limit():
    steps = [rate_limited(t * 5, f"s{t}") for t in range(8)]  # within 40 s
    findings = run(InfrastructureDetector(), steps)
    assert len(findings) == 1
    [f] = findings
    assert (f.detector, f.kind, f.incident_class, f.severity, f.signature) == (
        "infrastructure",
        "rate_limit",
        "infrastructure",
        "SEV2",
        "rate_limit:gpt-4o",
    )
    assert f.step is steps[4]  # the fifth failure crosses min_failures
    summary = f.evidence[0]
    assert summary["failures"] == 5 and summary["calls"] == 5 and summary["rate"] == 1.0
    assert summary["sessions_affected"] == 5 and summary["window_s"] == 60
    assert summary["model"] == "gpt-4o"
    assert len(summary["samples"]) == 3
    assert summary["samples"][-1]["span_id"] == steps[4].span_id
    assert summary["samples"][-1]["http_status"] == 429
    assert summary["samples"][-1]["error_type"] == "openai.RateLimitError"
    assert f.evidence[1]["span_id"] == steps[4].span_id
    assert "session" not in f.signature and "span" not in f.signature


def test_a_burst_of_429s_across_12_sessions_escalates_to_sev1():
    steps = [rate_limited(t * 4, f"s{t}") for t in range(12)]  # within 44 s
    findings = run(InfrastructureDetector(), steps)
    assert [f.severity for f in findings] == ["SEV2", "SEV1"]  # escalation, within the cooldown
    assert findings[1].step is steps[9]  # the tenth distinct session
    assert findings[1].evidence[0]["sessions_affected"] == 10
    assert {f.signature for f in findings} == {"rate_limit:gpt-4o"}


def test_one_429_then_success_is_nothing():
    steps = [rate_limited(1, "s1"), ok(2, "s1"), ok(3, "s1")]
    assert run(InfrastructureDetector(), steps) == []


def test_retried_429s_across_many_sessions_at_a_low_rate_are_nothing():
    steps = []
    for i in range(40):  # 40 sessions in 40 s; every fourth one has a 429 that the SDK retries
        if i % 4 == 0:
            steps.append(rate_limited(i, f"s{i}"))
        steps += [ok(i + 0.1, f"s{i}"), ok(i + 0.2, f"s{i}")]
    # 10 failures ≥ min_failures, but 10 / 90 calls < min_rate
    assert run(InfrastructureDetector(), steps) == []


def test_failures_from_one_session_only_never_pass_the_rate_rule():
    steps = [rate_limited(t, "s1") for t in range(8)]
    [f] = run(InfrastructureDetector(), steps)
    assert f.severity == "SEV3"  # the session streak; one session is isolated


def test_failures_spread_over_ten_minutes_at_a_low_rate_are_nothing():
    steps = []
    for t in range(0, 600, 2):
        session = f"s{t // 30}"
        if t % 30 == 0:
            steps.append(rate_limited(t, session))
        else:
            steps.append(ok(t, session))
    assert run(InfrastructureDetector(), steps) == []


def test_the_window_slides_old_failures_expire():
    early = [rate_limited(t, f"a{t}") for t in (0, 1, 2, 3)]  # 4: one short of min_failures
    late = [rate_limited(t, f"b{t}") for t in (70, 71, 72, 73)]  # 4 again, after 60 s
    assert run(InfrastructureDetector(), early + late) == []
    within = [rate_limited(t, f"c{t}") for t in (40, 41)]
    findings = run(InfrastructureDetector(), early + within)
    assert len(findings) == 1 and findings[0].step is within[0]


def test_the_window_follows_the_injected_clock():
    detector, sessions = InfrastructureDetector(), SessionTable()

    def feed(step, now_s):
        return detector.observe(step, sessions.for_step(step, step.time_ns), int(now_s * SECOND))

    for i in range(4):
        assert feed(rate_limited(i, f"s{i}"), now_s=i) is None
    # a late span stamped at t=4 but processed at t=100: the first four have left the window
    assert feed(rate_limited(4, "s4"), now_s=100) is None
    assert detector._windows[("acme", "support-svc", "llm", "gpt-4o")].calls.count(0) == 11


def test_a_sustained_outage_yields_one_finding_per_window():
    # 3 minutes of 429s, one a second, across 4 sessions, no successes
    steps = [rate_limited(t, f"s{t % 4}") for t in range(180)]
    findings = run(InfrastructureDetector(), steps)
    assert [f.severity for f in findings] == ["SEV2"] * 3
    times = [f.step.time_ns / SECOND for f in findings]
    assert times == [4, 64, 124]  # first crossing, then once per 60 s cooldown
    assert {f.signature for f in findings} == {"rate_limit:gpt-4o"}


def test_different_models_are_different_signatures():
    steps = [rate_limited(t, f"s{t}", model="gpt-4o" if t % 2 else "claude") for t in range(10)]
    findings = run(InfrastructureDetector(), steps)
    assert sorted(f.signature for f in findings) == ["rate_limit:claude", "rate_limit:gpt-4o"]


def test_thresholds_come_from_policy():
    policy = AgentPolicy(thresholds={"infrastructure": {"min_failures": 2}})
    sessions = SessionTable(policy_for=lambda service, agent: policy)
    detector, steps = InfrastructureDetector(), [rate_limited(t, f"s{t}") for t in (1, 2)]
    findings = [detector.observe(s, sessions.for_step(s, s.time_ns), s.time_ns) for s in steps]
    assert findings[0] is None and findings[1].severity == "SEV2"


# --- one session ---------------------------------------------------------------------------------


def test_three_timeouts_in_a_row_in_one_session_is_sev3_timeout():
    steps = [timed_out(t) for t in (1, 2, 3)]
    [f] = run(InfrastructureDetector(), steps)
    assert (f.kind, f.severity, f.signature, f.incident_class) == (
        "timeout",
        "SEV3",
        "timeout:gpt-4o",
        "infrastructure",
    )
    assert f.step is steps[2]
    assert f.evidence[0]["rule"] == "streak" and f.evidence[0]["session_streak"] == 3


def test_a_success_breaks_the_streak():
    steps = [timed_out(1), timed_out(2), ok(3, "s1"), timed_out(4), timed_out(5)]
    assert run(InfrastructureDetector(), steps) == []


def test_a_success_of_another_tool_does_not_break_an_llm_streak():
    steps = [timed_out(1), tool(1.5, "search"), timed_out(2), tool(2.5, "search"), timed_out(3)]
    [f] = run(InfrastructureDetector(), steps)
    assert f.kind == "timeout" and f.step is steps[4]


def test_streaks_in_two_sessions_report_once_per_window():
    steps = [timed_out(t, "a") for t in (1, 2, 3)] + [timed_out(t, "b") for t in (10, 11, 12)]
    findings = run(InfrastructureDetector(), steps)
    # the second streak also makes 6 failures from 2 sessions at 100 %: escalates to SEV2
    assert [f.severity for f in findings] == ["SEV3", "SEV2"]


# --- tools ---------------------------------------------------------------------------------------


def test_5xx_from_a_tool_backend_is_tool_backend():
    steps = [
        tool(t, "crm_lookup", args=t, session=f"s{t % 3}", failed=True, http_status=503,
             error_type="503")
        for t in range(6)
    ]  # fmt: skip
    findings = run(InfrastructureDetector(), steps)
    assert [(f.kind, f.severity, f.signature) for f in findings] == [
        ("tool_backend", "SEV3", "tool_backend:crm_lookup"),  # the first 503: isolated
        ("tool_backend", "SEV2", "tool_backend:crm_lookup"),  # 5 from 3 sessions: the rate
    ]
    assert [f.evidence[0]["rule"] for f in findings] == ["isolated", "rate"]
    assert findings[1].evidence[0]["tool"] == "crm_lookup"
    assert findings[1].evidence[0]["cause"] == "http_5xx"


def test_a_single_session_tool_backend_streak_is_sev3():
    steps = [tool(t, "crm_lookup", args=t, failed=True, error_type="httpx.ConnectError") for t in (1, 2, 3)]  # fmt: skip
    [f] = run(InfrastructureDetector(), steps)  # isolated at the first; the streak is its update
    assert (f.kind, f.severity, f.step) == ("tool_backend", "SEV3", steps[0])
    # with the isolated rule off, the streak of 3 is what fires
    [f] = run(InfrastructureDetector(isolated_failures=0), steps)
    assert (f.severity, f.step, f.evidence[0]["rule"]) == ("SEV3", steps[2], "streak")


def test_a_single_connection_refused_tool_failure_is_an_isolated_finding():
    steps = [
        tool(1, "crm_lookup", args=1),
        tool(2, "crm_lookup", args=2, failed=True, error_type="ConnectionRefusedError"),
        tool(3, "crm_lookup", args=3),
    ]
    [f] = run(InfrastructureDetector(), steps)
    assert (f.detector, f.kind, f.severity, f.incident_class, f.signature) == (
        "infrastructure", "tool_backend", "SEV3", "infrastructure", "tool_backend:crm_lookup",
    )  # fmt: skip
    summary = f.evidence[0]
    assert (summary["rule"], summary["cause"], summary["session_failures"]) == (
        "isolated", "connection_refused", 1,
    )  # fmt: skip
    assert summary["error_type"] == "ConnectionRefusedError" and summary["tool"] == "crm_lookup"
    assert f.step is steps[1] and "connection_refused" in f.title


def test_one_timeout_of_a_tool_backend_is_an_isolated_finding():
    # SWE-agent's bash tool: one command timed out among many healthy calls
    steps = [tool(t, "bash", args=t) for t in range(20)]
    steps.insert(10, tool(9.5, "bash", args=99, failed=True, error_type="CommandTimeoutError"))
    [f] = run(InfrastructureDetector(), steps)
    assert (f.kind, f.severity, f.signature, f.evidence[0]["rule"]) == (
        "timeout", "SEV3", "timeout:bash", "isolated",
    )  # fmt: skip
    assert f.evidence[0]["calls"] == 11 and f.evidence[0]["failures"] == 1


def test_an_llm_timeout_alone_is_not_isolated():
    # a provider's single timeout is retried by the SDK: only streaks and rates judge models
    assert run(InfrastructureDetector(), [timed_out(1), ok(2, "s1")]) == []


def test_a_400_invalid_argument_is_not_infrastructure():
    step = tool(1, "refund", failed=True, http_status=400, error_type="invalid_argument")
    assert failure_kind(step) is None and run(InfrastructureDetector(), [step]) == []


def test_a_content_filter_refusal_is_not_infrastructure():
    # the provider's policy refused the content: the provider works (documented in the module)
    for error_type, status in [("content_filter", 400), ("ContentPolicyViolationError", 0)]:
        step = llm(1, 1, 0, status="Error", error_type=error_type, http_status=status)
        assert failure_kind(step) is None
        assert run(InfrastructureDetector(), [step] * 5) == []


def test_a_framework_error_type_is_classified_by_its_other_evidence():
    # ToolRetryError alone says nothing of the cause: not infrastructure; with a timeout message
    # folded into error.type, or a 503 the collector read out of the status message, it is
    bare = tool(1, "search", failed=True, error_type="ToolRetryError")
    assert failure_kind(bare) is None
    timeout = tool(1, "search", failed=True, error_type="ToolRetryError: Command timed out (30s)")
    assert classify(timeout) == ("timeout", "timeout")
    [f] = run(InfrastructureDetector(), [timeout])
    assert (f.kind, f.severity, f.evidence[0]["rule"]) == ("timeout", "SEV3", "isolated")
    unavailable = tool(1, "search", failed=True, error_type="_OTHER", http_status=503)
    assert classify(unavailable) == ("tool_backend", "http_5xx")


def test_the_error_text_names_the_cause_in_unambiguous_phrases_only():
    """A framework class with the cause only in the span's status or exception message (issue 13:
    "a tool backend failing with 'connection refused'"); an agent's own error text that merely
    contains a word like "timeout" or "connect" is not infrastructure."""

    def failed(message: str, error_type: str = "ToolRetryError") -> Step:
        return tool(1, "crm", failed=True, error_type=error_type, error_text=message)

    assert classify(failed("[Errno 111] Connection refused")) == (
        "tool_backend", "connection_refused",
    )  # fmt: skip
    assert classify(failed("HTTPSConnectionPool: Read timed out. (read timeout=30)", "_OTHER")) == (
        "timeout", "timeout",
    )  # fmt: skip
    assert classify(failed("[Errno -2] Name or service not known")) == ("tool_backend", "dns")
    assert classify(failed("429 Too Many Requests")) == ("rate_limit", "rate_limit")
    for agents_own in ("invalid timeout value: -1", "cannot connect order 12 to customer 7", ""):
        assert classify(failed(agents_own)) is None, agents_own
    [f] = run(InfrastructureDetector(), [failed("Connection refused by crm.internal:443")])
    assert (f.kind, f.severity, f.evidence[0]["cause"]) == (
        "tool_backend",
        "SEV3",
        "connection_refused",
    )


@pytest.mark.parametrize(
    ("error_text", "http_status", "found"),
    [
        ("ConnectionRefusedError: [Errno 111] Connection refused", 0,
         ("tool_backend", "connection_refused")),
        ("ConnectionResetError: [Errno 104] Connection reset by peer", 0,
         ("tool_backend", "connection_reset")),
        ("httpx.ConnectError: [Errno -3] Temporary failure in name resolution", 0,
         ("tool_backend", "dns")),
        ("getaddrinfo ENOTFOUND crm.internal", 0, ("tool_backend", "dns")),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate", 0,
         ("tool_backend", "tls")),
        ("Failed to establish a new connection: [Errno 113] No route to host", 0,
         ("tool_backend", "connection")),
        ("ReadTimeout: The read operation timed out", 0, ("timeout", "timeout")),
        ("upstream answered: Bad Gateway", 0, ("tool_backend", "http_5xx")),
        ("crm says: Service Unavailable, try later", 0, ("tool_backend", "http_5xx")),
        # GitHub answers its rate limit with a 403: the text says which
        ("API rate limit exceeded for installation ID 4242", 403, ("rate_limit", "rate_limit")),
        ("permission denied for table orders", 403, None),  # the agent's reach: semantic
        ("order 12 not found", 404, None),
    ],
)  # fmt: skip
def test_a_tool_failure_is_classified_by_its_error_text(error_text, http_status, found):
    step = tool(1, "crm", failed=True, error_type="ToolRetryError", http_status=http_status,
                error_text=error_text)  # fmt: skip
    assert classify(step) == found


def test_a_model_failure_is_classified_by_its_error_text():
    def failed(error_text: str, error_type: str = "openai.BadRequestError", status: int = 400):
        return classify(llm(1, 1, 0, status="Error", error_type=error_type, http_status=status,
                            error_text=error_text))  # fmt: skip

    assert failed("This model's maximum context length is 128000 tokens. However, you "
                  "requested 130000 tokens") == ("context_length", "context_length")  # fmt: skip
    assert failed("Rate limit reached for gpt-4o in organization org-1", "_OTHER", 0) == (
        "rate_limit", "rate_limit",
    )  # fmt: skip
    assert failed("Server disconnected without sending a response.", "_OTHER", 0) == (
        "provider_5xx", "connection_reset",
    )  # fmt: skip
    assert failed("Request timed out.", "_OTHER", 0) == ("timeout", "timeout")
    assert failed("Invalid value for 'temperature'") is None


def test_a_content_filter_is_the_providers_policy_not_an_outage():
    """Decision (module docstring, README): the provider judged the agent's input and answered as
    designed; retrying cannot help, so it is never infrastructure, whatever carries it."""
    azure = (
        "Error code: 400 - {'error': {'message': \"The response was filtered due to the prompt "
        "triggering Azure OpenAI's content management policy.\", 'code': 'content_filter'}}"
    )
    steps = [
        llm(t, 1, 0, session=f"s{t}", status="Error", error_type=error_type, http_status=status,
            error_text=text)
        for t, (error_type, status, text) in enumerate([
            ("openai.BadRequestError", 400, azure),
            ("_OTHER", 0, azure),  # no status at all: the text alone decides
            ("_OTHER", 500, "blocked by the content filter"),
        ] * 4)
    ]  # fmt: skip
    assert [classify(step) for step in steps[:3]] == [None, None, None]
    # an answer cut by the filter is not even a failure: finish_reason content_filter
    steps.append(llm(20, 1000, 3, session="s20", finish_reason="content_filter"))
    assert run(InfrastructureDetector(), steps) == []


def test_a_tool_result_worded_as_an_error_by_its_framework_is_judged_as_a_failure():
    """The span is not marked failed, but the collector found a framework's error wording at the
    start of the result (OpenAI Agents SDK) and put it in error_text: its cause counts."""
    handed_over = (
        "An error occurred while running the tool. Please try again. Error: [Errno 111] "
        "Connection refused"
    )
    step = tool(2, "crm_lookup", error_text=handed_over)
    assert not step.failed and classify(step) == ("tool_backend", "connection_refused")
    [f] = run(InfrastructureDetector(), [tool(1, "crm_lookup"), step, tool(3, "crm_lookup")])
    assert (f.kind, f.severity, f.evidence[0]["rule"], f.evidence[0]["cause"]) == (
        "tool_backend", "SEV3", "isolated", "connection_refused",
    )  # fmt: skip
    # the same wording about the agent's own call is not infrastructure
    assert classify(tool(2, "crm_lookup", error_text="Error: order 12 not found")) is None


def _steps_through_the_collector(*spans) -> list[Step]:
    """Steps as the detection process gets them: the real normaliser, then the step columns."""
    batch, _ = Normalizer().normalize(request(*spans))
    return steps_from_columns({name: batch.columns[name] for name in STEP_COLUMNS})


def test_a_coding_agents_output_that_mentions_connection_refused_is_not_infrastructure():
    bash = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "bash"}
    outputs = [
        "===== FAILURES =====\ntests/test_db.py::test_connect FAILED\nE   psycopg.Operational"
        "Error: connection to server at 127.0.0.1, port 5432 failed: Connection refused\n",
        "curl: (7) Failed to connect to localhost port 8080 after 0 ms: Connection refused",
        "$ cat app.log\nERROR upstream timed out; 502 Bad Gateway; getaddrinfo failed",
    ]
    steps = _steps_through_the_collector(
        *(span("bash", {**bash, "gen_ai.tool.call.result": out}) for out in outputs * 3)
    )
    assert [s.error_text for s in steps] == [""] * 9
    assert run(InfrastructureDetector(), steps) == []
    # the tool backend itself failing, as the OpenAI Agents SDK hands it to the model: it is
    [worded] = _steps_through_the_collector(
        span("bash", {**bash, "gen_ai.tool.call.result": "An error occurred while running the "
                      "tool. Please try again. Error: [Errno 111] Connection refused"})
    )  # fmt: skip
    [f] = run(InfrastructureDetector(), [worded])
    assert (f.kind, f.evidence[0]["cause"]) == ("tool_backend", "connection_refused")


def test_a_few_failures_among_thousands_of_healthy_calls_show_when_they_cluster_in_one_tool():
    """Rates are per tool (and model): 3,000 healthy searches do not dilute the CRM's failures."""
    steps = [tool(i * 0.01, "search", args=i, session=f"h{i % 50}") for i in range(3000)]
    for i in range(8):  # the CRM backend: 6 of 8 calls fail, from 3 sessions, within the window
        steps.append(tool(30 + i, "crm_lookup", args=i, session=f"c{i % 3}", failed=i < 6,
                          error_type="ToolRetryError",
                          error_text="Bad Gateway" if i < 6 else ""))  # fmt: skip
    findings = run(InfrastructureDetector(), steps)
    assert [(f.severity, f.evidence[0]["rule"]) for f in findings] == [
        ("SEV3", "isolated"),  # the first failure: unambiguous evidence in one session-run
        ("SEV2", "rate"),  # the fifth: 5 of 5 crm_lookup calls, 3 sessions
    ]
    rate = findings[1].evidence[0]
    assert (rate["tool"], rate["failures"], rate["calls"], rate["sessions_affected"]) == (
        "crm_lookup", 5, 5, 3,
    )  # fmt: skip
    assert {f.signature for f in findings} == {"tool_backend:crm_lookup"}


def test_a_framework_failure_whose_text_names_an_outage_is_not_the_agents_repeated_failure():
    """Step.systems_failure reads the error text too: the loop detector's repeated_failure
    (semantic) leaves a backend refusing connections to this detector."""
    refused = [
        tool(t, "crm_lookup", args=1, failed=True, error_type="ToolRetryError",
             error_text="ConnectionRefusedError: [Errno 111] Connection refused")
        for t in (1, 2, 3)
    ]  # fmt: skip
    assert all(step.systems_failure for step in refused)
    assert [f.kind for f in run(LoopDetector(), refused)] == []
    rejected = [
        tool(t, "crm_lookup", args=1, failed=True, error_type="ToolRetryError",
             error_text="invalid timeout value: -1")
        for t in (1, 2, 3)
    ]  # fmt: skip
    assert not any(step.systems_failure for step in rejected)
    assert [f.kind for f in run(LoopDetector(), rejected)] == ["repeated_failure"]


def test_isolated_failures_on_one_tool_across_sessions_escalate_as_one_signature():
    steps = [
        tool(t * 3, "search", args=t, session=f"s{t}", failed=True, error_type="httpx.ConnectError")
        for t in range(12)
    ]  # fmt: skip
    findings = run(InfrastructureDetector(), steps)
    assert [f.severity for f in findings] == ["SEV3", "SEV2", "SEV1"]
    assert [f.evidence[0]["rule"] for f in findings] == ["isolated", "rate", "rate"]
    assert {f.signature for f in findings} == {"tool_backend:search"}  # one incident
    assert findings[2].evidence[0]["sessions_affected"] == 10


def test_a_flaky_backend_reports_once_per_window():
    # one timeout a session, a new session every 20 s, the rest healthy: one finding per 60 s
    steps = []
    for i in range(9):
        steps += [tool(i * 20 + k, "bash", args=k, session=f"s{i}") for k in range(10)]
        steps.append(tool(i * 20 + 10, "bash", session=f"s{i}", failed=True,
                          error_type="CommandTimeoutError"))  # fmt: skip
    findings = run(InfrastructureDetector(), steps)
    assert [f.step.time_ns // SECOND for f in findings] == [10, 70, 130]
    assert {(f.severity, f.signature) for f in findings} == {("SEV3", "timeout:bash")}


def test_a_tool_rejecting_bad_arguments_is_not_infrastructure():
    steps = [
        tool(t, "refund", args=t, session=f"s{t % 5}", failed=True, http_status=400,
             error_type="400")
        for t in range(30)
    ]  # fmt: skip
    assert run(InfrastructureDetector(), steps) == []


def test_other_step_kinds_are_ignored():
    detector = InfrastructureDetector()
    step = llm(0, 1, 0, status="Error", http_status=503)
    step.kind = "agent"
    assert run(detector, [step] * 10) == [] and len(detector) == 0


# --- memory --------------------------------------------------------------------------------------


def test_10000_distinct_keys_stay_within_the_documented_cap():
    detector = InfrastructureDetector(max_keys=1000)
    sessions = SessionTable(max_sessions=100)
    for i in range(10_000):  # distinct tools on one second: nothing idles out, the LRU cap holds
        step = tool(i / 10_000, f"tool{i}", session=f"s{i % 50}", failed=True, http_status=503)
        detector.observe(step, sessions.for_step(step, step.time_ns), step.time_ns)
    assert len(detector) == 1000 and detector.evicted == 9000
    total = deep_size(detector._windows)
    assert total <= 1000 * KEY_BYTES_MAX
    per_key = total / 1000
    print(f"bytes per key, one failing kind: {per_key:.0f}")
    assert per_key < 3 * 1024  # one failing kind, one session, one sample


def test_a_key_at_its_caps_stays_within_key_bytes_max():
    detector = InfrastructureDetector(session_cap=32)
    kinds = [
        ("openai.RateLimitError", 429), ("httpx.ReadTimeout", 0), ("openai.InternalServerError", 500),
        ("openai.AuthenticationError", 401), ("context_length_exceeded", 400),
    ]  # fmt: skip
    steps = [
        llm(
            i / 10, 1, 0, session=str(uuid.UUID(int=i)), status="Error", error_type=e, http_status=s
        )
        for i in range(500)
        for e, s in [kinds[i % len(kinds)]]
    ]
    run(detector, steps)
    [window] = detector._windows.values()
    assert len(window.kinds) == 5
    assert all(min(f.sessions[1]) >= 0 for f in window.kinds.values())  # all 32 slots taken
    size = deep_size(window) + deep_size(("acme", "support-svc", "llm", "gpt-4o"))
    print(f"bytes per key at its caps, 5 failing kinds: {size}")
    assert size <= KEY_BYTES_MAX


def test_idle_keys_are_dropped():
    detector = InfrastructureDetector()
    run(detector, [tool(0, f"tool{i}") for i in range(100)] + [tool(600, "late")])
    assert len(detector) == 1
