"""``Step``: one normalised span as the detectors see it, built from a ``SpanBatch``'s columns.

Detectors key on these normalised fields (DESIGN.md §3), never on span names.
"""

from __future__ import annotations

from dataclasses import dataclass

from analyzer.failure_text import text_cause

# batch column -> Step field, in Step's field order
_COLUMNS = {
    "TimestampNs": "time_ns",
    "Duration": "duration_ns",
    "Tenant": "tenant",
    "ServiceName": "service",
    "AgentName": "agent",
    "SessionId": "session",
    "UserId": "user",
    "TraceId": "trace_id",
    "SpanId": "span_id",
    "ParentSpanId": "parent_span_id",
    "StepKind": "kind",
    "Model": "model",
    "ToolName": "tool",
    "ToolArgs": "tool_args",
    "ToolArgsHash": "args_hash",
    "ToolResultHash": "result_hash",
    "InputTokens": "input_tokens",
    "OutputTokens": "output_tokens",
    "CostUsd": "cost_usd",
    "StatusCode": "status",
    "ErrorType": "error_type",
    "HttpStatus": "http_status",
    "FinishReason": "finish_reason",
    "ErrorText": "error_text",
    "OutputToolCalls": "output_tool_calls",
    "Drill": "drill",
}


_SYSTEMS_ERROR_WORDS = (
    "timeout",
    "timedout",
    "deadline",
    "connect",
    "unavailable",
    "unreachable",
    "ratelimit",
)


# what a provider answered about the request itself: its content or its size
_NOT_SYSTEMS = ("", "content_filter", "context_length")


@dataclass(slots=True)
class Step:
    time_ns: int
    duration_ns: int
    tenant: str
    service: str
    agent: str
    session: str
    user: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str  # llm, tool, agent, retrieval, embedding, other
    model: str = ""
    tool: str = ""
    tool_args: str = ""
    args_hash: int = 0
    result_hash: int = 0  # the call's outcome (result, or error); 0: none recorded
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    status: str = "Unset"  # Unset, Ok, Error
    error_type: str = ""
    http_status: int = 0
    finish_reason: str = ""
    # where a failure's cause is told: a failed call's status message, exception events and (tools)
    # result start, or a tool's result its framework worded as an error ("Error: …") on a span not
    # marked failed; ≤ 512 chars, empty for a healthy call (collector/normalize.py error_text_of)
    error_text: str = ""
    # an LLM step's requested tool calls, JSON (collector/normalize.py output_tool_calls): made
    # into tool steps where no tool spans are sent (analyzer/tool_calls.py)
    output_tool_calls: str = ""
    # a gameday drill's step (resource attribute ``agentwatch.drill``): its incident is a DRILL,
    # fingerprinted apart from production's (``analyzer.incidents.lifecycle.fingerprint_of``)
    drill: bool = False

    @property
    def failed(self) -> bool:
        return self.status == "Error"

    @property
    def systems_failure(self) -> bool:
        """Failed because a system failed (429, 5xx, timeout, unreachable), not the agent's call.

        A 4xx other than 408/429 is the agent's misuse (bad arguments): semantic, not this. With
        no status, the error type's words, else an unambiguous phrase of the error text
        (``analyzer.failure_text``: a framework's class such as ToolRetryError whose message says
        "Connection refused").
        """
        if not self.failed:
            return False
        if self.http_status:
            return self.http_status in (408, 429) or self.http_status >= 500
        lowered = self.error_type.lower()
        if any(word in lowered for word in _SYSTEMS_ERROR_WORDS):
            return True
        return bool(self.error_text) and text_cause(self.error_text) not in _NOT_SYSTEMS

    @property
    def end_ns(self) -> int:
        return self.time_ns + self.duration_ns

    def evidence(self) -> dict:
        """What an incident shows of this step: enough to act on, no raw attributes."""
        out = {
            "span_id": self.span_id,
            "trace_id": self.trace_id,
            "kind": self.kind,
            "time_ns": self.time_ns,
        }
        if self.tool:
            out.update(tool=self.tool, tool_args=self.tool_args)
        if self.model:
            out.update(
                model=self.model, input_tokens=self.input_tokens, output_tokens=self.output_tokens
            )
        if self.status != "Unset":
            out["status"] = self.status
        if self.error_type:
            out.update(error_type=self.error_type, http_status=self.http_status)
        if self.error_text:  # where the cause is told (≤ 512 chars)
            out["error_text"] = self.error_text
        return out


#: The batch columns a Step is built from (what the detection process is sent).
STEP_COLUMNS = tuple(_COLUMNS)


def steps_from_columns(columns: dict[str, list]) -> list[Step]:
    """Steps in arrival order from a batch's columns (``SpanBatch.columns``, or the subset the
    detection process is sent)."""
    return [Step(*row) for row in zip(*(columns[n] for n in STEP_COLUMNS), strict=True)]
