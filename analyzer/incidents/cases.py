"""Regression cases: an incident's failing input and off-rails step, kept so an eval can replay it.

On-call captures one case per incident (``agentwatch incidents capture ID --expected "..."``,
``POST /v1/incidents/{id}/case`` or the console): the triggering input (the run's root input or
first user message, whichever convention the spans follow), the off-rails step (the incident's
span: tool, arguments, result), what the agent should have done, and the trajectory up to that
step. This module builds the row from what the store holds (pure: ``triggering_input``,
``build_case``), exports it (``as_jsonl``, ``as_langfuse_item``) and holds the SQL of
``regression_cases`` (``CaseRepository``). It judges nothing and changes no incident.

>>> spans = [{"SpanId": "a1", "inputs": {}},
...          {"SpanId": "b2", "inputs": {"gen_ai.input.messages": '[{"role": "system",'
...           ' "content": "be brief"}, {"role": "user", "parts": [{"type": "text",'
...           ' "content": "where is order 42?"}]}]'}}]
>>> triggering_input(spans)
('where is order 42?', 'gen_ai.input.messages', 'b2')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import orjson

from analyzer.incidents.model import utc_ns, utc_text
from analyzer.incidents.repository import RunStore, text_param, text_value
from collector.store import insert_rows, query_rows

MAX_CASE_STEPS = 100  # steps kept up to the off-rails step
AFTER_STEPS = 5  # and after it (what the agent did next)
MAX_FIELD = 2000  # characters of one argument, result or message in the trajectory
MAX_INPUT = 20_000  # characters of the triggering input
MAX_EXPECTED = 5000
TABLE = "regression_cases"

#: span attributes that carry a run's input, read by ``INPUT_SPANS`` (a prefix ends in ``.``)
INPUT_KEYS = ("input.value", "traceloop.entity.input", "gen_ai.input.messages", "gen_ai.prompt")
_INDEXED = re.compile(
    r"^(llm\.input_messages|gen_ai\.prompt)\.(\d+)\.(?:message\.)?(role|content)$"
)

# The run's first spans that carry an input (by time), their input attributes only.
INPUT_SPANS = f"""
SELECT SpanId, inputs FROM
(
    SELECT SpanId, Timestamp,
        mapApply((k, v) -> (k, leftUTF8(v, {MAX_INPUT})), mapFilter((k, v) -> v != '' AND
            (k IN {INPUT_KEYS!r} OR match(k, '^(llm[.]input_messages|gen_ai[.]prompt)[.][0-9]+[.]')),
            SpanAttributes)) AS inputs
    FROM agent_spans
    WHERE Tenant = {text_param("tenant")} AND if({{by_session:UInt8}} = 1,
          SessionId = {text_param("session")}, TraceId = {text_param("trace")})
)
WHERE notEmpty(inputs)
ORDER BY Timestamp, SpanId
LIMIT 20
"""


def triggering_input(spans: Sequence[Mapping]) -> tuple[str, str, str] | None:
    """(text, the attribute it came from, span id) of the run's first input: on each span, in time
    order, the first user message (OTel GenAI ``gen_ai.input.messages``, OpenInference
    ``llm.input_messages.N.message.*``, OpenLLMetry ``gen_ai.prompt.N.*``), else its whole input
    (``input.value``, ``traceloop.entity.input``: an agent's root span carries the request there).

    >>> triggering_input([{"SpanId": "r", "inputs": {"input.value": "refund me"}}])
    ('refund me', 'input.value', 'r')
    >>> triggering_input([{"SpanId": "l", "inputs": {"input.value": "{...}",
    ...     "llm.input_messages.0.message.role": "system",
    ...     "llm.input_messages.0.message.content": "rules",
    ...     "llm.input_messages.1.message.role": "user",
    ...     "llm.input_messages.1.message.content": "cancel my plan"}}])
    ('cancel my plan', 'llm.input_messages', 'l')
    >>> triggering_input([{"SpanId": "x", "inputs": {}}]) is None
    True
    """
    for span in spans:
        inputs = span.get("inputs") or {}
        found = _first_user_message(inputs)
        if found is None:
            for key in ("input.value", "traceloop.entity.input"):
                if inputs.get(key):
                    found = (inputs[key], key)
                    break
        if found is not None:
            return found[0][:MAX_INPUT], found[1], span.get("SpanId", "")
    return None


def _first_user_message(inputs: Mapping[str, str]) -> tuple[str, str] | None:
    raw = inputs.get("gen_ai.input.messages") or inputs.get("gen_ai.prompt")
    if raw:
        key = "gen_ai.input.messages" if inputs.get("gen_ai.input.messages") else "gen_ai.prompt"
        try:
            messages = orjson.loads(raw)
        except orjson.JSONDecodeError:
            messages = None
        for message in messages if isinstance(messages, list) else ():
            if isinstance(message, dict) and message.get("role") == "user":
                text = _message_text(message)
                if text:
                    return text, key
    indexed: dict[tuple[str, int], dict[str, str]] = {}
    for key, value in inputs.items():
        match = _INDEXED.match(key)
        if match:
            indexed.setdefault((match[1], int(match[2])), {})[match[3]] = value
    for (prefix, _), message in sorted(indexed.items()):
        if message.get("role") == "user" and message.get("content"):
            return message["content"], prefix
    return None


def _message_text(message: dict) -> str:
    """A message's text: ``content`` as a string, or its text ``parts`` (OTel GenAI)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = message.get("parts") if isinstance(message.get("parts"), list) else content
    texts = [
        p.get("content") or p.get("text") or ""
        for p in parts or ()
        if isinstance(p, dict) and p.get("type", "text") == "text"
    ]
    return "\n".join(t for t in texts if isinstance(t, str) and t)


def _cut(text, limit: int = MAX_FIELD) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def case_step(row: Mapping, number: int) -> dict:
    """One trajectory step of a case (a row of ``agentwatch.console.data.TRAJECTORY``), bounded.

    >>> case_step({"ts_ns": 1_796_618_949_000_000_000, "SpanId": "ab", "StepKind": "tool",
    ...     "SpanName": "execute_tool t", "ToolName": "t", "ToolArgs": '{"q": 1}',
    ...     "output": "x" * 3000, "StatusCode": "Error", "ErrorType": "E"}, 7)["result"][-3:]
    'xx…'
    """
    return {
        "n": number,
        "at": utc_text(int(row.get("ts_ns") or 0)),
        "span_id": row.get("SpanId", ""),
        "kind": row.get("StepKind") or "other",
        "name": row.get("SpanName", ""),
        "model": row.get("Model", ""),
        "tool": row.get("ToolName", ""),
        "arguments": _cut(row.get("ToolArgs")),
        "input": _cut(row.get("input")),
        "result": _cut(row.get("output")),
        "input_tokens": int(row.get("InputTokens") or 0),
        "output_tokens": int(row.get("OutputTokens") or 0),
        "status": row.get("StatusCode", ""),
        "error": _cut(row.get("ErrorType") or row.get("StatusMessage") or ""),
    }


def build_case(
    incident: Mapping,
    input_spans: Sequence[Mapping],
    steps: Sequence[tuple[int, Mapping]],
    expected: str,
    actor: str,
    at_ns: int,
) -> dict:
    """The ``regression_cases`` row of ``incident``: ``input_spans`` as ``INPUT_SPANS`` reads
    them, ``steps`` the trajectory as (number in the run, row) in time order.

    >>> row = build_case({"incident_id": "inc-1", "tenant": "t", "service": "s", "agent": "a",
    ...     "detector": "loop", "kind": "repeated_call", "session_id": "s1", "trace_id": "tr",
    ...     "span_id": "c3", "tool": "lookup_order"},
    ...     [{"SpanId": "r", "inputs": {"input.value": "where is 42"}}],
    ...     [(1, {"SpanId": "r"}), (2, {"SpanId": "c3", "ToolName": "lookup_order",
    ...      "ToolArgs": '{"id": 42}', "output": "", "ErrorType": "NotFound"})],
    ...     "ask the user for the order number", "alice", 1_796_618_949_000_000_000)
    >>> row["input"], row["step_tool"], row["step_arguments"], row["step_error"]
    ('where is 42', 'lookup_order', '{"id": 42}', 'NotFound')
    >>> row["trajectory_steps"], orjson.loads(row["trajectory"])[-1]["n"]
    (2, 2)
    """
    expected = expected.strip()
    if not expected:
        raise ValueError("say what the agent should have done (expected behaviour)")
    span = incident.get("span_id") or ""
    at = next((i for i, (_, row) in enumerate(steps) if row.get("SpanId") == span), None)
    if at is None:  # the off-rails step is not among the steps read: keep the run's last ones
        kept = steps[-MAX_CASE_STEPS:]
    else:
        kept = steps[max(0, at - MAX_CASE_STEPS + 1) : at + 1 + AFTER_STEPS]
    flagged = steps[at][1] if at is not None else {}
    found = triggering_input(input_spans)
    text, source, input_span = found if found else ("", "", "")
    trajectory = [case_step(row, number) for number, row in kept]
    return {
        "incident_id": incident["incident_id"],
        "tenant": incident.get("tenant", ""),
        "service": incident.get("service", ""),
        "agent": incident.get("agent", ""),
        "detector": incident.get("detector", ""),
        "kind": incident.get("kind", ""),
        "session_id": incident.get("session_id", ""),
        "trace_id": incident.get("trace_id", ""),
        "input": text,
        "input_source": source,
        "input_span_id": input_span,
        "step_span_id": span,
        "step_tool": flagged.get("ToolName") or incident.get("tool", ""),
        "step_arguments": _cut(flagged.get("ToolArgs"), MAX_INPUT),
        "step_result": _cut(flagged.get("output"), MAX_INPUT),
        "step_error": _cut(flagged.get("ErrorType") or flagged.get("StatusMessage") or ""),
        "expected": expected[:MAX_EXPECTED],
        "captured_by": actor[:200],
        "captured_at": utc_text(at_ns),
        "trajectory": orjson.dumps(trajectory).decode(),
        "trajectory_steps": len(trajectory),
    }


# --- export ------------------------------------------------------------------------------------

EXPORT_FORMATS = ("jsonl", "langfuse")


def for_people(row: Mapping) -> dict:
    """A stored row as the API and ``jsonl`` give it: the trajectory decoded, ISO time."""
    case = dict(row)
    case["trajectory"] = orjson.loads(case.get("trajectory") or "[]")
    case["trajectory_steps"] = int(case.get("trajectory_steps") or 0)
    at = str(case.get("captured_at", ""))
    if at and "T" not in at:
        case["captured_at"] = _iso(utc_ns(at))
    return case


def _iso(ns: int) -> str:
    return utc_text(ns).replace(" ", "T")[:23] + "Z"


def as_langfuse_item(case: Mapping, dataset: str) -> dict:
    """A Langfuse dataset item: the body of ``POST /api/public/dataset-items``
    (``CreateDatasetItemRequest``: ``datasetName``, ``input``, ``expectedOutput``, ``metadata``,
    ``sourceTraceId``, ``sourceObservationId``, ``id``, ``status``). The id is the incident's, so
    exporting again upserts the same item; the trace and span ids are W3C ids, as Langfuse's
    OpenTelemetry ingest keeps them.

    >>> item = as_langfuse_item({"incident_id": "inc-1", "input": "hi", "expected": "say hi",
    ...     "trace_id": "ab" * 16, "step_span_id": "cd" * 8, "step_tool": "t"}, "regressions")
    >>> item["datasetName"], item["id"], item["input"], item["expectedOutput"], item["status"]
    ('regressions', 'inc-1', 'hi', 'say hi', 'ACTIVE')
    """
    metadata = {
        name: case.get(name)
        for name in ("incident_id", "tenant", "service", "agent", "detector", "kind",
                     "session_id", "input_source", "captured_by", "captured_at")
        if case.get(name) not in (None, "")
    }  # fmt: skip
    metadata["off_rails_step"] = {
        "span_id": case.get("step_span_id", ""),
        "tool": case.get("step_tool", ""),
        "arguments": case.get("step_arguments", ""),
        "result": case.get("step_result", ""),
        "error": case.get("step_error", ""),
    }
    metadata["trajectory"] = case.get("trajectory", [])
    return {
        "datasetName": dataset,
        "id": case["incident_id"],
        "input": case.get("input", ""),
        "expectedOutput": case.get("expected", ""),
        "metadata": metadata,
        "sourceTraceId": case.get("trace_id") or None,
        "sourceObservationId": case.get("step_span_id") or None,
        "status": "ACTIVE",
    }


def export_lines(cases: Sequence[Mapping], fmt: str, dataset: str = "agentwatch-regressions"):
    """Cases (``for_people``) as JSON Lines in ``fmt`` (``EXPORT_FORMATS``)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format is one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    for case in cases:
        yield orjson.dumps(as_langfuse_item(case, dataset) if fmt == "langfuse" else case)


# --- the store ---------------------------------------------------------------------------------

_FOR_PEOPLE = (
    " SETTINGS output_format_json_quote_64bit_integers = 0, date_time_output_format = 'simple'"
)


class CaseRepository:
    """``regression_cases`` in the store (on its thread, like ``IncidentRepository``)."""

    def __init__(self, store, run_store: RunStore) -> None:
        self.store = store
        self.run_store = run_store

    async def save(self, row: dict) -> None:
        await self.run_store(insert_rows, self.store, TABLE, [row])

    async def of_incident(self, incident_id: str) -> dict | None:
        rows = await self.run_store(
            query_rows, self.store,
            f"SELECT * FROM {TABLE} FINAL WHERE incident_id = {{id:String}} LIMIT 1" + _FOR_PEOPLE,
            {"id": incident_id},
        )  # fmt: skip
        return for_people(rows[0]) if rows else None

    async def listed(self, tenant: str | None, limit: int) -> list[dict]:
        """The newest ``limit`` cases (of ``tenant`` when given), newest first."""
        where = f"WHERE tenant = {text_param('tenant')}" if tenant is not None else ""
        rows = await self.run_store(
            query_rows, self.store,
            f"SELECT * FROM {TABLE} FINAL {where} ORDER BY captured_at DESC, incident_id"
            f" LIMIT {int(limit)}" + _FOR_PEOPLE,
            {"tenant": text_value(tenant)} if tenant is not None else None,
        )  # fmt: skip
        return [for_people(row) for row in rows]
