"""Attribute names of the three agent conventions, and how they map onto agentwatch's fields.

OTel GenAI (current and deprecated names), OpenInference and OpenLLMetry/Traceloop name the same
facts differently (see DESIGN.md §3). Each field below lists its source attributes in priority
order: the first one present on a span wins. Detectors key on these normalised fields, never on
span names. This module is data only; the logic that applies it lives in ``normalize.py``.
"""

from __future__ import annotations

# field -> attribute keys, highest priority first
FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "session": (
        "gen_ai.conversation.id",
        "session.id",
        "traceloop.association.properties.session_id",
        "gen_ai.session.id",
    ),
    "user": (
        "user.id",
        "enduser.id",
        "traceloop.association.properties.user_id",
        "gen_ai.user",
    ),
    "tenant": ("tenant.id", "agentwatch.tenant"),
    # a gameday drill's spans (``agentwatch gameday run``): column ``Drill``, kept out of
    # production views and fingerprints; a resource attribute, so one test names every span.
    # Its value is the drill's id, honoured only for a drill an admin started
    # (``normalize.RunningDrills``)
    "drill": ("agentwatch.drill",),
    "agent": ("gen_ai.agent.name", "agent.name", "gen_ai.agent.id"),
    "operation": ("gen_ai.operation.name",),
    "oi_kind": ("openinference.span.kind",),
    "tl_kind": ("traceloop.span.kind",),
    "tl_entity": ("traceloop.entity.name",),
    "tl_input": ("traceloop.entity.input",),
    "oi_input": ("input.value",),
    "request_type": ("llm.request.type",),
    "model": ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name"),
    "provider": ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"),
    "tool": ("gen_ai.tool.name", "tool.name"),
    "tool_args": ("gen_ai.tool.call.arguments",),
    # a tool call's outcome (``ToolResultHash``): the GenAI result, else OpenInference's output of
    # a TOOL span, else Traceloop's output of a tool entity (as ``oi_input``/``tl_input`` for
    # arguments); a failed call's error is hashed with it (normalize.py, ``result_hash_of``)
    "tool_result": ("gen_ai.tool.call.result",),
    "oi_output": ("output.value",),
    "tl_output": ("traceloop.entity.output",),
    "input_tokens": (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
        "llm.usage.prompt_tokens",
    ),
    "output_tokens": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
        "llm.usage.completion_tokens",
    ),
    "total_tokens": (
        "llm.usage.total_tokens",
        "llm.token_count.total",
        "gen_ai.usage.total_tokens",
    ),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
    "finish_reason": (
        "gen_ai.response.finish_reasons",
        "gen_ai.response.finish_reason",
        "llm.response.finish_reason",
        "gen_ai.completion.0.finish_reason",
        "llm.output_messages.0.message.finish_reason",
    ),
    "error_type": ("error.type",),
    "http_status": ("http.response.status_code", "http.status_code"),
}

#: JSON Schema keywords that may sit at the top of a tool's parameter schema. OpenInference with
#: ``OPENINFERENCE_ENABLE_GENAI_SEMCONV`` copies ``tool.parameters`` (the tool's JSON *schema*)
#: into ``gen_ai.tool.call.arguments``, so every call of a tool would look identical. A preferred
#: ``tool_args`` value is **schema-shaped**, and the call's own value (``input.value`` of an
#: OpenInference TOOL span, ``traceloop.entity.input`` of a Traceloop tool) is taken instead when
#: there is one, if it is the text of a JSON object such that:
#:
#: - ``"type"`` is ``"object"`` and ``"properties"`` is an object whose values are all objects
#:   (a property's own schema), and
#: - every top-level key is one of these keywords (a real call naming a parameter ``type`` or
#:   ``properties`` nearly always has another argument beside them that is not a keyword).
#:
#: Conservative: a call whose arguments merely include ``type`` or ``properties`` keeps them, and
#: with no call value to fall back on the schema is kept as sent.
JSON_SCHEMA_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "title", "description", "additionalProperties",
        "$schema", "$id", "$ref", "$defs", "definitions", "$comment", "strict", "examples",
        "default", "patternProperties", "propertyNames", "minProperties", "maxProperties",
        "dependentRequired", "dependentSchemas", "unevaluatedProperties", "allOf", "anyOf",
        "oneOf", "not", "if", "then", "else", "nullable", "deprecated", "readOnly", "writeOnly",
    }
)  # fmt: skip

#: attribute key -> field name, for the single dictionary lookup per attribute on the hot path.
FIELD_OF_KEY: dict[str, str] = {key: field for field, keys in FIELD_KEYS.items() for key in keys}

#: Step kinds stored in ``StepKind``.
STEP_KINDS = ("llm", "tool", "agent", "retrieval", "embedding", "other")

OPERATION_STEP = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "completion": "llm",
    "embeddings": "embedding",
    "embedding": "embedding",
    "retrieval": "retrieval",
    "execute_tool": "tool",
    "invoke_agent": "agent",
    "create_agent": "agent",
    "invoke_workflow": "agent",
}

OPENINFERENCE_STEP = {
    "LLM": "llm",
    "TOOL": "tool",
    "AGENT": "agent",
    "RETRIEVER": "retrieval",
    "RERANKER": "retrieval",
    "EMBEDDING": "embedding",
    "CHAIN": "other",
    "GUARDRAIL": "other",
    "EVALUATOR": "other",
}

TRACELOOP_STEP = {"workflow": "agent", "agent": "agent", "tool": "tool", "task": "other"}

REQUEST_TYPE_STEP = {
    "chat": "llm",
    "completion": "llm",
    "embedding": "embedding",
    "rerank": "retrieval",
}

#: Finish reasons differ between providers and conventions; these are folded together.
FINISH_REASON_ALIASES = {
    "tool_call": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "content_filter": "content_filter",
}

# OTLP enum values rendered the way the OpenTelemetry Collector's ClickHouse exporter renders them,
# so queries written for that exporter work unchanged.
SPAN_KIND_NAMES = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
STATUS_CODE_NAMES = ("Unset", "Ok", "Error")

#: Tool calls the model asked for, read from an LLM span's output messages (the ``OutputToolCalls``
#: column), for frameworks that send no tool spans (bare OpenLLMetry, OpenInference's LLM-only
#: instrumentations). ``gen_ai.output.messages`` is a JSON list of messages whose ``parts`` of
#: ``"type": "tool_call"`` carry ``name`` and ``arguments`` (OTel GenAI, OpenLLMetry from 0.4x), on
#: the span or on its ``gen_ai.client.inference.operation.details`` event (Strands); each
#: indexed convention names one call per key, ``<prefix>N<middle>M<suffix>name|arguments``.
OUTPUT_MESSAGES_KEY = "gen_ai.output.messages"
OUTPUT_TOOL_CALL_KEYS = (
    # OpenLLMetry before gen_ai.output.messages: gen_ai.completion.0.tool_calls.0.name
    ("gen_ai.completion.", ".tool_calls.", "."),
    # OpenInference: llm.output_messages.0.message.tool_calls.0.tool_call.function.name
    ("llm.output_messages.", ".message.tool_calls.", ".tool_call.function."),
)
