"""``Run`` -> the OTLP spans real instrumentations emit, in one of two conventions.

- ``genai``: the OTel GenAI semantic conventions as ``opentelemetry-instrumentation-openai-v2``
  with ``opentelemetry-util-genai`` writes them: an ``invoke_agent {agent}`` root span carrying
  ``gen_ai.agent.name`` and ``gen_ai.conversation.id`` (and ``user.id``) **only on the root**, which
  ends, and is exported, after its children (issue 13's "the session arrives last"); ``chat {model}``
  spans with ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``/``output_tokens``;
  ``execute_tool {tool}`` spans with ``gen_ai.tool.name``, ``gen_ai.tool.call.arguments``,
  ``gen_ai.tool.call.result`` and an error status plus ``error.type`` where the call failed.
- ``openinference``: OpenInference as its instrumentors write it inside ``using_session``:
  ``openinference.span.kind`` AGENT/LLM/TOOL, ``session.id`` and ``user.id`` on every span,
  ``llm.model_name``, ``llm.token_count.prompt/completion/total``, ``tool.name``,
  ``input.value``/``output.value``, an ``exception`` event on a failed tool call.

Every span keeps the step's own times (relative to the session start, shifted by ``start_ns``).
Each span is emitted when it ends, as a span processor would see it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from bench.replay.model import Run, Step

CONVENTIONS = ("genai", "openinference")
SCOPES = {
    "genai": ("opentelemetry.instrumentation.openai_v2", "2.1b0"),
    "openinference": ("openinference.instrumentation.openai", "0.1.30"),
}
NS = 1_000_000_000


def _value(value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def _attrs(span: Span, attributes: dict) -> None:
    span.attributes.extend(
        KeyValue(key=k, value=_value(v)) for k, v in attributes.items() if v not in (None, "")
    )


def ids_for(session_id: str, salt: str = "") -> tuple[bytes, bytes]:
    """A stable 16-byte trace id and 8-byte root span id for a session (salt: a second replay)."""
    digest = hashlib.sha256((salt + session_id).encode()).digest()
    return digest[:16], digest[16:24]


def _span_id(trace_id: bytes, n: int) -> bytes:
    return hashlib.sha256(trace_id + n.to_bytes(4, "big")).digest()[:8]


@dataclass
class Emitted:
    emit_s: float  # seconds after the session's start when the span ends (is exported)
    span: Span


def convert(run: Run, convention: str, start_ns: int, salt: str = "") -> list[Emitted]:
    """The spans of ``run`` in ``convention``, root last among equal end times, by end time."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; one of {CONVENTIONS}")
    trace_id, root_id = ids_for(run.session_id, salt)
    out: list[Emitted] = []
    for n, step in enumerate(run.steps, start=1):
        span = Span(
            trace_id=trace_id,
            span_id=_span_id(trace_id, n),
            parent_span_id=root_id,
            start_time_unix_nano=start_ns + int(step.start_s * NS),
            end_time_unix_nano=start_ns + int(step.end_s * NS),
            kind=Span.SPAN_KIND_CLIENT if step.kind == "llm" else Span.SPAN_KIND_INTERNAL,
        )
        (_genai_step if convention == "genai" else _openinference_step)(span, run, step)
        out.append(Emitted(step.end_s, span))
    root = Span(
        trace_id=trace_id,
        span_id=root_id,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + int(run.duration_s * NS),
        kind=Span.SPAN_KIND_INTERNAL,
        status=Status(code=Status.STATUS_CODE_OK),
    )
    if convention == "genai":
        root.name = f"invoke_agent {run.agent}"
        _attrs(
            root,
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": run.agent,
                "gen_ai.conversation.id": run.session_id,
                "gen_ai.provider.name": run.provider,
                "gen_ai.request.model": run.model,
                "user.id": run.user_id,
            },
        )
    else:
        root.name = run.agent
        _attrs(
            root,
            {
                "openinference.span.kind": "AGENT",
                "agent.name": run.agent,
                "session.id": run.session_id,
                "user.id": run.user_id,
            },
        )
    out.append(Emitted(run.duration_s, root))
    out.sort(key=lambda e: (e.emit_s, e.span.span_id == root_id))
    return out


def _genai_step(span: Span, run: Run, step: Step) -> None:
    if step.kind == "llm":
        span.name = f"chat {step.model}"
        span.status.code = Status.STATUS_CODE_OK
        _attrs(
            span,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": run.provider,
                "gen_ai.request.model": step.model,
                "gen_ai.response.model": step.model,
                "gen_ai.usage.input_tokens": step.input_tokens,
                "gen_ai.usage.output_tokens": step.output_tokens,
                "gen_ai.response.finish_reasons": [step.finish_reason or "stop"],
            },
        )
        return
    span.name = f"execute_tool {step.tool}"
    _attrs(
        span,
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": step.tool,
            "gen_ai.tool.call.id": step.call_id,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.arguments": step.arguments,
            "gen_ai.tool.call.result": step.result,
        },
    )
    if step.error:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = step.error[:1000]
        _attrs(span, {"error.type": step.error_type})


def _openinference_step(span: Span, run: Run, step: Step) -> None:
    common = {"session.id": run.session_id, "user.id": run.user_id}
    if step.kind == "llm":
        span.name = "ChatCompletion"
        span.status.code = Status.STATUS_CODE_OK
        _attrs(
            span,
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": step.model,
                "llm.provider": run.provider,
                "llm.system": run.provider,
                "llm.token_count.prompt": step.input_tokens,
                "llm.token_count.completion": step.output_tokens,
                "llm.token_count.total": step.input_tokens + step.output_tokens,
                "output.value": step.output_text,
                "output.mime_type": "text/plain",
                **common,
            },
        )
        return
    span.name = step.tool
    _attrs(
        span,
        {
            "openinference.span.kind": "TOOL",
            "tool.name": step.tool,
            "input.value": step.arguments,
            "input.mime_type": "application/json",
            "output.value": step.result,
            **common,
        },
    )
    if step.error:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = step.error[:1000]
        event = span.events.add()
        event.name = "exception"
        event.time_unix_nano = span.end_time_unix_nano
        _attrs(event, {"exception.type": step.error_type, "exception.message": step.error[:1000]})
    else:
        span.status.code = Status.STATUS_CODE_OK


def spans_as_dicts(emitted: list[Emitted]) -> list[dict]:
    """Readable form for tests and ``--dump``: name, times, attributes (python values)."""
    out = []
    for e in emitted:
        attrs = {}
        for kv in e.span.attributes:
            which = kv.value.WhichOneof("value")
            if which == "array_value":
                attrs[kv.key] = [
                    getattr(v, v.WhichOneof("value")) for v in kv.value.array_value.values
                ]
            else:
                attrs[kv.key] = getattr(kv.value, which)
        out.append(
            {
                "name": e.span.name,
                "emit_s": e.emit_s,
                "trace_id": e.span.trace_id.hex(),
                "span_id": e.span.span_id.hex(),
                "parent_span_id": e.span.parent_span_id.hex(),
                "start_ns": e.span.start_time_unix_nano,
                "end_ns": e.span.end_time_unix_nano,
                "status": Status.StatusCode.Name(e.span.status.code),
                "status_message": e.span.status.message,
                "events": [ev.name for ev in e.span.events],
                "attributes": attrs,
            }
        )
    return out


def dumps(emitted: list[Emitted]) -> str:
    return json.dumps(spans_as_dicts(emitted), indent=1)
