"""Turn an OTLP ``ExportTraceServiceRequest`` into columns: the raw span plus normalised agent fields.

This is the ingest hot path (tens of thousands of spans a second), so there are two readers of a
protobuf request, and one set of agent-field rules (``Normalizer._agent_fields``) that both feed:

- ``Normalizer.read_wire``: the C extension ``collector._otlp_reader`` reads the wire bytes, writes
  each attribute map straight to JSON text (an ``orjson.Fragment``) and hands over as Python
  objects only the attributes the agent fields need. Several times cheaper per span.
- ``Normalizer.normalize``: the reference reader over a decoded upb message (``decode.py``), which
  also takes every request the C reader leaves alone (invalid UTF-8, bad ids, rare value types,
  OTLP/JSON) and is used when the extension is not built (no C compiler at install time) or
  ``AGENTWATCH_NATIVE_READER=0``. ``tests/test_native_reader.py`` holds the two to identical blocks.

Conventions and prices are data in ``conventions.py`` and ``pricing.py``.

No value can fail a request. A span that cannot be stored faithfully (bad ids, a start or end time
the store cannot hold) is rejected with a reason and its neighbours are kept. A value that is only
unusable for an agent column (a token count of 1e308 or "lots", an HTTP status of 7) leaves that
column 0 and the span is stored, the attribute as sent: the span is still a true record of what
the agent did. The caller reports both as OTLP partial success. This module does no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable

import orjson

from collector.consumer import Rejections, SpanBatch
from collector.conventions import (
    FIELD_KEYS,
    FIELD_OF_KEY,
    FINISH_REASON_ALIASES,
    JSON_SCHEMA_KEYWORDS,
    OPENINFERENCE_STEP,
    OPERATION_STEP,
    OUTPUT_MESSAGES_KEY,
    OUTPUT_TOOL_CALL_KEYS,
    REQUEST_TYPE_STEP,
    SPAN_KIND_NAMES,
    STATUS_CODE_NAMES,
    TRACELOOP_STEP,
)
from collector.pricing import PriceTable

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_STATUS_ERROR = 2
#: The latest time the store holds: ``Timestamp`` is DateTime64(9), nanoseconds in an Int64.
MAX_TIME_NS = 2**63 - 1
_MAX_TIME_TEXT = "2262-04-11T23:47:16Z"
_MAX_COUNT = 2**64 - 1  # token columns are UInt64

# key -> (field, priority); lower priority wins when a span carries several names for one fact
_FIELD_PRIORITY: dict[str, tuple[str, int]] = {
    key: (field_name, FIELD_KEYS[field_name].index(key)) for key, field_name in FIELD_OF_KEY.items()
}

#: Columns of one normalised batch, named as in the ``otel_traces_ingest`` table (schemas/), which
#: a materialized view turns into ``otel_traces`` rows (timestamps from integer nanoseconds, nested
#: events and links). The first group mirrors the OpenTelemetry Collector ClickHouse exporter.
COLUMNS = (
    "TimestampNs", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
    "ServiceName", "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes", "Duration",
    "StatusCode", "StatusMessage", "EventsTimestampNs", "EventsName", "EventsAttributes",
    "LinksTraceId", "LinksSpanId", "LinksTraceState", "LinksAttributes",
    "Tenant", "SessionId", "UserId", "AgentName", "StepKind", "Model", "Provider", "ToolName",
    "ToolArgs", "ToolArgsHash", "ToolResultHash", "InputTokens", "OutputTokens",
    "CacheReadTokens", "CacheWriteTokens", "ReasoningTokens", "FinishReason", "ErrorType",
    "HttpStatus", "ErrorText", "CostUsd", "Convention", "Drill",
)  # fmt: skip
#: ``ErrorText`` is for the detectors only (``error_text``), not a table column: never stored
#: (``collector.consumer.DETECTION_ONLY_COLUMNS``).
_SPAN_COLUMNS = COLUMNS  # one value per span from the readers and ``_agent_fields``
#: ``OutputToolCalls`` is filled afterwards from the LLM spans' attribute text
#: (``_add_output_tool_calls``).
COLUMNS = (*_SPAN_COLUMNS, "OutputToolCalls")

# Exception class names (last dotted part) of the common model SDKs, and the HTTP status they mean.
_EXCEPTION_HTTP_STATUS = {
    "RateLimitError": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailableError": 503,
    "ServiceUnavailable": 503,
    "OverloadedError": 529,
    "AuthenticationError": 401,
    "PermissionDeniedError": 403,
    "BadRequestError": 400,
    "NotFoundError": 404,
    "UnprocessableEntityError": 422,
    "ConflictError": 409,
}
_HTTP_STATUS_IN_TEXT = re.compile(
    r"(?:error code|status code|status|http(?:/[\d.]+)?|code)[\s:=\"']*([1-5]\d\d)\b|^\s*([1-5]\d\d)\b",
    re.IGNORECASE | re.ASCII,
)


class RunningDrills:
    """The gameday drills a span may claim to be part of: (tenant, drill id) -> the drill's
    service. A span is a drill only when its ``agentwatch.drill`` names one of them, in its own
    tenant and service: any exporter can write the attribute, only an admin can start a drill
    (``POST /v1/gamedays``), so a made-up claim cannot hide a real agent's incidents.

    The collector replaces the set from the ``gamedays`` table every few seconds (drills started
    on any collector sharing the store; an ended drill stays claimable for a grace period) and
    ``add`` puts a drill started here in at once. No I/O here.
    """

    def __init__(self, keep_added_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.claimable: dict[tuple[str, str], str] = {}
        self._added: dict[tuple[str, str], tuple[str, float]] = {}
        self._keep_added_s = keep_added_s
        self._clock = clock

    def add(self, tenant: str, drill_id: str, service: str) -> None:
        """A drill just started here: claimable now, and kept until a refresh has seen it
        (a refresh that read the store before the drill was saved must not drop it)."""
        self._added[(tenant, drill_id)] = (service, self._clock())
        self.claimable = {**self.claimable, (tenant, drill_id): service}

    def replace(self, drills: Iterable[tuple[str, str, str]]) -> None:
        """The claimable drills as the store has them: (tenant, drill id, service)."""
        fresh = {(tenant, drill_id): service for tenant, drill_id, service in drills}
        now = self._clock()
        self._added = {
            key: added
            for key, added in self._added.items()
            if now - added[1] < self._keep_added_s and key not in fresh
        }
        for key, (service, _) in self._added.items():
            fresh[key] = service
        self.claimable = fresh  # one reference swap: readers see the old set or the new


#: ``on_drill_refused(spans, tenant, claim, service)``: spans of one batch whose drill claim was
#: refused (one of them named)
DrillRefused = Callable[[int, str, str, str], None]


class Normalizer:
    """Normalises requests; holds the price table and defaults (no per-request state)."""

    def __init__(
        self,
        prices: PriceTable | None = None,
        default_tenant: str = "default",
        drills: RunningDrills | None = None,
        on_drill_refused: DrillRefused | None = None,
    ) -> None:
        self.prices = prices or PriceTable()
        self.default_tenant = default_tenant
        self.unpriced_models: set[str] = set()
        #: no drills known: every drill claim is refused (production is the safe side)
        self.drills = drills if drills is not None else RunningDrills()
        self.on_drill_refused = on_drill_refused

    def read_wire(
        self, body: bytes, rejections: Rejections, tenant: str | None = None
    ) -> SpanBatch | None:
        """Columns for a protobuf request read by the C reader; ``None`` when the reader is not
        built or leaves this request to the reference path (``decode_protobuf`` + ``normalize``).
        ``tenant``: the one the exporter's token names; it replaces the spans' ``tenant.id``."""
        if _reader is None:
            return None
        parsed = _reader.parse(body)
        if parsed is None:
            return None
        raw, found, r_found, exceptions = parsed
        names, statuses, messages, event_names = raw[5], raw[13], raw[14], raw[16]
        agent_fields = self._agent_fields
        agent_rows = []
        problems: list[str] = []
        for i, own in enumerate(found):
            agent_rows.append(
                agent_fields(
                    own,
                    r_found[i],
                    statuses[i] == "Error",
                    messages[i],
                    bool(event_names[i]),
                    exceptions[i],
                    problems,
                )
            )
            if problems:
                rejections.keep(f"span {i} ({names[i]!r}): {'; '.join(problems)}")
                problems.clear()
        cols = dict(zip(_RAW_COLUMNS, raw, strict=True))
        if agent_rows:
            cols.update(zip(_AGENT_COLUMNS, map(list, zip(*agent_rows, strict=True)), strict=True))
        else:
            cols.update((name, []) for name in _AGENT_COLUMNS)
        self._finish(cols, tenant)
        return SpanBatch(cols, len(agent_rows))

    def normalize(
        self, request, rejections: Rejections | None = None, tenant: str | None = None
    ) -> tuple[SpanBatch, Rejections]:
        """Columns for every valid span of ``request``; invalid spans are counted in ``rejections``.

        The reference reader (see the module docstring); ``read_wire`` is the fast one.
        ``tenant``: as for ``read_wire``."""
        rejections = rejections if rejections is not None else Rejections()
        rows: list[tuple] = []
        append_row = rows.append
        problems: list[str] = []
        index = -1
        for rs in request.resource_spans:
            r_found: dict = {}
            resource = _attributes(rs.resource.attributes, r_found)
            service = resource.get("service.name", "")
            for ss in rs.scope_spans:
                scope_name = ss.scope.name
                scope_version = ss.scope.version
                for span in ss.spans:
                    index += 1
                    trace_id = span.trace_id
                    span_id = span.span_id
                    parent = span.parent_span_id
                    if not (
                        len(trace_id) == 16
                        and len(span_id) == 8
                        and trace_id != _ZERO_TRACE
                        and span_id != _ZERO_SPAN
                        and (not parent or len(parent) == 8)
                    ):
                        problem = _id_problem(trace_id, span_id, parent)
                        rejections.add(f"span {index} ({span.name!r}): {problem}")
                        continue
                    start = span.start_time_unix_nano
                    end = span.end_time_unix_nano
                    events = span.events
                    if not (0 < start <= MAX_TIME_NS and 0 < end <= MAX_TIME_NS) or (
                        events and max(e.time_unix_nano for e in events) > MAX_TIME_NS
                    ):
                        problem = _time_problem(start, end, events)
                        rejections.add(f"span {index} ({span.name!r}): {problem}")
                        continue
                    found: dict = {}
                    attrs = _attributes(span.attributes, found)
                    status = span.status
                    code = status.code
                    agent = self._agent_fields(
                        found,
                        r_found,
                        code == _STATUS_ERROR,
                        status.message,
                        bool(events),
                        _exception_pairs(events) if events else None,
                        problems,
                    )
                    if problems:
                        rejections.keep(f"span {index} ({span.name!r}): {'; '.join(problems)}")
                        problems.clear()
                    kind = span.kind
                    append_row(
                        (
                            start,
                            trace_id.hex(),
                            span_id.hex(),
                            parent.hex(),
                            span.trace_state,
                            span.name,
                            SPAN_KIND_NAMES[kind] if 0 <= kind < 6 else "Unspecified",
                            service,
                            resource,
                            scope_name,
                            scope_version,
                            attrs,
                            end - start if end > start else 0,
                            STATUS_CODE_NAMES[code] if 0 <= code < 3 else "Unset",
                            status.message,
                            *(
                                _events_and_links(span)
                                if span.events or span.links
                                else _NO_EVENTS_OR_LINKS
                            ),
                            *agent,
                        )
                    )
        if rows:
            cols = dict(zip(_SPAN_COLUMNS, map(list, zip(*rows, strict=True)), strict=True))
        else:
            cols = {name: [] for name in _SPAN_COLUMNS}
        self._finish(cols, tenant)
        return SpanBatch(cols, len(rows)), rejections

    def _finish(self, cols: dict, tenant: str | None) -> None:
        """What needs the whole batch: tool calls of LLM spans, facts inherited along a trace,
        the token's tenant, then the drill claims (which hold only in the final tenant)."""
        _add_output_tool_calls(cols)
        _inherit_along_trace(cols)
        if tenant is not None and cols["Tenant"]:
            cols["Tenant"] = [tenant] * len(cols["Tenant"])
        claims = cols["Drill"]
        if any(claims):
            cols["Drill"] = self._honour_drills(claims, cols["Tenant"], cols["ServiceName"])
        else:  # no span claims a drill: the usual batch
            cols["Drill"] = [False] * len(claims)

    def _honour_drills(self, claims: list[str], tenants: list[str], services: list[str]):
        """``Drill`` of each span: its claim (``agentwatch.drill``) names a drill running in its
        tenant, for its service. The rest are production spans; refusals are reported."""
        claimable = self.drills.claimable
        out = []
        refused = 0
        refused_at = 0
        for i, claim in enumerate(claims):
            honoured = bool(claim) and claimable.get((tenants[i], claim)) == services[i]
            if claim and not honoured:
                refused += 1
                refused_at = i
            out.append(honoured)
        if refused and self.on_drill_refused is not None:
            i = refused_at
            self.on_drill_refused(refused, tenants[i], claims[i], services[i])
        return out

    def _agent_fields(
        self,
        found: dict,
        r_found: dict,
        is_error: bool,
        status_message: str,
        has_events: bool,
        exception_pairs: list | None,
        problems: list[str],
    ) -> tuple:
        """The normalised agent columns of one span (``COLUMNS`` from ``Tenant`` on).

        ``found``/``r_found``: field -> (priority, key, value, text) of the span's and its
        resource's agent attributes (value as a Python object, text as stored in the map).
        ``exception_pairs``: ("exception.type" | "exception.message", string) of its exception
        events, in order. A number that cannot be right for its column (a token count of -3 or
        1e308) leaves the column 0 and is described in ``problems``; nothing here raises. Hot
        path: plain dict lookups inline, no helper calls unless needed.
        """
        own = found
        if r_found:  # resource-level facts (tenant, user …) apply unless the span says otherwise
            found = {**r_found, **found}
        get = found.get
        operation = get("operation", _MISSING)[3]
        oi_kind = get("oi_kind", _MISSING)[3]
        tl_kind = get("tl_kind", _MISSING)[3]
        step = (
            OPERATION_STEP.get(operation)
            or OPENINFERENCE_STEP.get(oi_kind)
            or TRACELOOP_STEP.get(tl_kind)
            or REQUEST_TYPE_STEP.get(get("request_type", _MISSING)[3])
        )
        tool = get("tool", _MISSING)[3] or (
            get("tl_entity", _MISSING)[3] if tl_kind == "tool" else ""
        )
        if not step:
            if "input_tokens" in own or "output_tokens" in own or "total_tokens" in own:
                step = "llm"
            elif tool:
                step = "tool"
            else:
                step = "other"
        agent = get("agent", _MISSING)[3] or (
            get("tl_entity", _MISSING)[3] if tl_kind in ("agent", "workflow") else ""
        )

        tool_args = result = ""
        args_hash = 0
        if step == "tool":
            oi_tool, tl_tool = oi_kind == "TOOL", tl_kind == "tool"
            call_args = (
                get("oi_input", _MISSING)[3]
                if oi_tool
                else get("tl_input", _MISSING)[3]
                if tl_tool
                else ""
            )
            raw_args = get("tool_args", _MISSING)[3]
            if not raw_args or (call_args and is_schema_shaped(raw_args)):
                raw_args = call_args  # the call's own value over a copy of the tool's schema
            if raw_args:
                tool_args = canonical_tool_args(raw_args)
                args_hash = args_hash_of(tool_args)
            result = get("tool_result", _MISSING)[3] or (
                get("oi_output", _MISSING)[3]
                if oi_tool
                else get("tl_output", _MISSING)[3]
                if tl_tool
                else ""
            )

        model = get("model", _MISSING)[3]
        # Usage counts only on LLM steps: frameworks repeat the totals on agent spans.
        input_tokens = output_tokens = cache_read = cache_write = reasoning = 0
        cost = 0.0
        if step == "llm":
            if "input_tokens" in own:
                input_tokens = _count(own["input_tokens"], "InputTokens", problems)
            if "output_tokens" in own:
                output_tokens = _count(own["output_tokens"], "OutputTokens", problems)
            if not input_tokens and not output_tokens and "total_tokens" in own:
                input_tokens = _count(own["total_tokens"], "InputTokens", problems)
            if "cache_read_tokens" in own:
                cache_read = _count(own["cache_read_tokens"], "CacheReadTokens", problems)
            if "cache_write_tokens" in own:
                cache_write = _count(own["cache_write_tokens"], "CacheWriteTokens", problems)
            if "reasoning_tokens" in own:
                reasoning = _count(own["reasoning_tokens"], "ReasoningTokens", problems)
            if model and (input_tokens or output_tokens):
                price = self.prices.lookup(model)
                if price is None:
                    if len(self.unpriced_models) < 1000:
                        self.unpriced_models.add(model)
                else:
                    cost = price.cost_usd(input_tokens, output_tokens, cache_read, cache_write)

        finish = ""
        hit = own.get("finish_reason")
        if hit:
            finish = _first_string(hit[2], hit[3]).lower()
            finish = FINISH_REASON_ALIASES.get(finish, finish)

        error_type = get("error_type", _MISSING)[3]
        http_status = 0
        if is_error or error_type or has_events:
            if "http_status" in own:
                http_status = _count(own["http_status"], "HttpStatus", problems, 100, 599)
            error_type, http_status = _error_details(
                is_error, status_message, exception_pairs, error_type, http_status
            )

        result_hash = 0
        if step == "tool" and (result or is_error):
            result_hash = result_hash_of(
                result, is_error, error_type, status_message, exception_pairs
            )
        error_text = (
            error_text_of(status_message, exception_pairs, result)
            if is_error
            or (
                result
                and step == "tool"
                and result[0] in _MARKER_FIRST
                and _is_tool_error_result(result)
            )
            else ""
        )

        if "oi_kind" in own:
            convention = "openinference"
        elif "tl_kind" in own or "tl_entity" in own or "request_type" in own:
            convention = "openllmetry"
        elif "operation" in own or any(h[1].startswith("gen_ai.") for h in own.values()):
            convention = "otel_genai"
        else:
            convention = "none"

        return (
            get("tenant", _MISSING)[3] or self.default_tenant,
            get("session", _MISSING)[3],
            get("user", _MISSING)[3],
            agent,
            step,
            model,
            get("provider", _MISSING)[3],
            tool,
            tool_args,
            args_hash,
            result_hash,
            input_tokens,
            output_tokens,
            cache_read,
            cache_write,
            reasoning,
            finish,
            error_type,
            http_status if 100 <= http_status <= 599 else 0,
            error_text,
            cost,
            convention,
            get("drill", _MISSING)[3],  # the claim: settled per batch (``_finish``)
        )


_MISSING = (0, "", None, "")


def _id_problem(trace_id: bytes, span_id: bytes, parent: bytes) -> str:
    if len(trace_id) != 16:
        return f"trace_id must be 16 bytes, got {len(trace_id)}"
    if trace_id == _ZERO_TRACE:
        return "trace_id is all zeros"
    if len(span_id) != 8:
        return f"span_id must be 8 bytes, got {len(span_id)}"
    if span_id == _ZERO_SPAN:
        return "span_id is all zeros"
    if parent and len(parent) != 8:
        return f"parent_span_id must be empty or 8 bytes, got {len(parent)}"
    return ""


def _time_problem(start: int, end: int, events) -> str:
    """Why a span's times cannot be stored (OTLP requires both; the store ends in 2262)."""
    for name, t in (("start_time_unix_nano", start), ("end_time_unix_nano", end)):
        if t == 0:
            return f"{name} is 0 (not set)"
        if t > MAX_TIME_NS:
            return f"{name} {t} is after {_MAX_TIME_TEXT}, the latest time the store holds"
    for i, event in enumerate(events):
        if event.time_unix_nano > MAX_TIME_NS:
            return (
                f"event {i} time_unix_nano {event.time_unix_nano} is after {_MAX_TIME_TEXT}, "
                "the latest time the store holds"
            )
    return ""


def _attributes(
    attributes, found: dict | None = None, _priority=_FIELD_PRIORITY.get
) -> dict[str, str]:
    """Attributes as a dict of strings; optionally record the agent fields found among them."""
    out: dict[str, str] = {}
    if found is None:
        for kv in attributes:
            v = kv.value
            out[kv.key] = v.string_value or anyvalue_to_str(v)
        return out
    for kv in attributes:
        k = kv.key
        v = kv.value
        s = v.string_value or anyvalue_to_str(v)
        out[k] = s
        fp = _priority(k)
        if fp is not None:
            name = fp[0]
            cur = found.get(name)
            if cur is None or fp[1] < cur[0]:
                found[name] = (fp[1], k, _typed(v), s)
    return out


def _typed(v):
    """An AnyValue as the Python value the agent-field rules read (bytes stay bytes)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_typed(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _typed(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def _exception_pairs(events) -> list[tuple[str, str]]:
    """("exception.type" | "exception.message", string value) of exception events, in order."""
    pairs = []
    for event in events:
        if event.name == "exception":
            for kv in event.attributes:
                if kv.key == "exception.type" or kv.key == "exception.message":
                    pairs.append((kv.key, kv.value.string_value))
    return pairs


def _events_and_links(span) -> tuple:
    """The seven nested columns (EventsTimestampNs … LinksAttributes) of one span."""
    events = span.events
    links = span.links
    if not events and not links:
        return _NO_EVENTS_OR_LINKS
    return (
        [e.time_unix_nano for e in events],
        [e.name for e in events],
        [_attributes(e.attributes) for e in events],
        [link.trace_id.hex() for link in links],
        [link.span_id.hex() for link in links],
        [link.trace_state for link in links],
        [_attributes(link.attributes) for link in links],
    )


_EMPTY: list = []  # shared, never mutated: serialised as []
_NO_EVENTS_OR_LINKS = (_EMPTY,) * 7


def _inherit_along_trace(cols: dict) -> None:
    """Children usually arrive with their root in one export: give them its session, user,
    tenant and (when they name none) agent.

    The session id is often set only on the root/agent span. Spans whose root comes in a later
    request keep an empty ``SessionId`` here; the ``agent_spans`` view resolves those at query
    time through ``session_traces``, and the analyzer keeps its own trace -> session map.
    """
    sessions, users, traces = cols["SessionId"], cols["UserId"], cols["TraceId"]
    tenants, agents = cols["Tenant"], cols["AgentName"]
    by_trace: dict[str, int] = {}
    missing = []
    for i, session in enumerate(sessions):
        if session:
            by_trace.setdefault(traces[i], i)
        else:
            missing.append(i)
    for i in missing:
        j = by_trace.get(traces[i])
        if j is not None:
            sessions[i] = sessions[j]
            if not users[i]:
                users[i] = users[j]
            tenants[i] = tenants[j]
    if by_trace:
        for i, agent in enumerate(agents):
            if not agent:
                j = by_trace.get(traces[i])
                if j is not None:
                    agents[i] = agents[j]


def anyvalue_to_str(v) -> str:
    """An OTLP AnyValue as the string the ClickHouse exporter stores (JSON for arrays and maps).

    Called for every attribute that is not a non-empty string, so the common kinds come first.
    """
    number = v.int_value  # the common kinds without WhichOneof: a non-zero int, double, true
    if number:
        return str(number)
    number = v.double_value
    if number:
        return _double_str(number)
    if v.bool_value:
        return "true"
    which = v.WhichOneof("value")
    if which == "int_value":
        return "0"
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which == "double_value":
        return _double_str(v.double_value)
    if which == "array_value":
        items = [x.string_value for x in v.array_value.values]
        if all(items):  # an array of non-empty strings (finish reasons, tags): no recursion
            return orjson.dumps(items).decode()
    elif which == "string_value" or which is None:
        return ""
    elif which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return orjson.dumps(anyvalue_to_python(v)).decode()


def anyvalue_to_python(v):
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [anyvalue_to_python(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: anyvalue_to_python(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, which)


def _double_str(d: float) -> str:
    text = repr(d)
    return text[:-2] if text.endswith(".0") else text


_KIND_NAMES = {
    str: "string_value",
    bool: "bool_value",
    int: "int_value",
    float: "double_value",
    list: "array_value",
    dict: "kvlist_value",
    bytes: "bytes_value",
}


def _count(
    hit: tuple, column: str, problems: list[str], low: int = 0, high: int = _MAX_COUNT
) -> int:
    """A whole-number attribute in ``low``..``high`` (the column's range), else 0 and a problem.

    OTLP/JSON and some SDKs send numbers as strings or doubles, so "12" and 12.0 are 12."""
    _, key, value, s = hit
    kind = type(value)
    if kind is int:
        n = value
    elif kind is float and value.is_integer():  # not NaN or ±inf
        n = int(value)
    elif kind is str and len(s) <= 40 and (t := s.strip()).isascii() and t.isdigit():
        n = int(t)
    else:
        n = None
    if n is not None and low <= n <= high:
        return n
    shown = s if len(s) <= 40 else s[:40] + "…"
    problems.append(
        f"attribute {key} must be a whole number from {low} to {high}, got "
        f"{_KIND_NAMES.get(kind, 'empty')} {shown!r}: {column} left 0"
    )
    return 0


def _first_string(value, text: str) -> str:
    """The first of a list of strings (finish reasons), or the value's text."""
    if type(value) is list:
        return value[0] if value and type(value[0]) is str else ""
    if type(value) is str:
        return value
    return text


def _error_details(
    is_error: bool, status_message: str, exception_pairs, error_type: str, http_status: int
) -> tuple[str, int]:
    """Error type and HTTP status from ``error.type``, exception events and the status message."""
    texts = [status_message] if status_message else []
    for key, text in exception_pairs or ():
        if key == "exception.type":
            if not error_type:
                error_type = text
        else:
            texts.append(text)
    if not http_status and error_type:
        if len(error_type) == 3 and error_type.isascii() and error_type.isdigit():
            http_status = int(error_type)
        else:
            http_status = _EXCEPTION_HTTP_STATUS.get(error_type.rsplit(".", 1)[-1], 0)
    if not http_status:
        for text in texts:
            match = _HTTP_STATUS_IN_TEXT.search(text)
            if match:
                http_status = int(match.group(1) or match.group(2))
                break
    if not error_type and is_error:
        error_type = str(http_status) if http_status else "_OTHER"
    return error_type, http_status


#: ``ErrorText``'s bound: a failure's cause is at the start of its messages, not in a stack trace
ERROR_TEXT_MAX_CHARS = 512
_ERROR_PART_MAX_CHARS = 256  # of each part, so the status message leaves room for the exception's
#: How tool frameworks word a tool's failure when they hand it to the model as the call's result
#: instead of failing the span (lower-cased prefixes of the result text):
#: the OpenAI Agents SDK's ``default_tool_error_function`` ("An error occurred while running the
#: tool. Please try again. Error: …"); LangGraph's ToolNode (``TOOL_CALL_ERROR_TEMPLATE`` "Error:
#: {error}\n Please fix your mistakes.", ``TOOL_EXECUTION_ERROR_TEMPLATE`` "Error executing tool
#: '…'"), FastMCP and MCP servers ("Error executing tool …"), tau-bench's environments ("Error:
#: …"); smolagents (``AgentToolExecutionError``: "Error when executing tool …"); CrewAI ("I
#: encountered an error while trying to use the tool"). LangChain's ``handle_tool_error=True``
#: returns the exception's bare message: no marker, so it counts only on a failed span.
_TOOL_ERROR_MARKERS = (
    "an error occurred while running the tool",
    "error:",
    "error executing tool",
    "error when executing tool",
    "i encountered an error while trying to use the tool",
)
_MARKER_PADDING = ' \t\n"'  # a JSON string's quote, a leading newline
#: the first characters a marked result can start with: most results fail this one test
_MARKER_FIRST = frozenset("aAeEiI" + _MARKER_PADDING)


def _is_tool_error_result(result: str) -> bool:
    """Whether a tool's result is a framework's report of the call failing (a marker at its start).

    >>> _is_tool_error_result("Error: ConnectionRefusedError(111, 'Connection refused')")
    True
    >>> _is_tool_error_result("FAILED tests/test_db.py - psycopg.OperationalError: connection refused")
    False
    """
    return result[:64].lstrip(_MARKER_PADDING).lower().startswith(_TOOL_ERROR_MARKERS)


def error_text_of(status_message: str, exception_pairs, result: str) -> str:
    """The ``ErrorText`` of a failed call: its status message, its exception events ("type:
    message") and the start of its result (a tool's error as handed to the model), each part cut
    to ``_ERROR_PART_MAX_CHARS``, a part already said left out, at most ``ERROR_TEXT_MAX_CHARS``.

    >>> error_text_of("ConnectionRefusedError: [Errno 111] Connection refused",
    ...               [("exception.type", "ConnectionRefusedError"),
    ...                ("exception.message", "[Errno 111] Connection refused")], "")
    'ConnectionRefusedError: [Errno 111] Connection refused'
    >>> error_text_of("", [("exception.message", "upstream gone")], "Error: bad gateway")
    'upstream gone\\nError: bad gateway'
    """
    parts = [status_message[:_ERROR_PART_MAX_CHARS]] if status_message else []
    kind = ""
    for key, text in exception_pairs or ():
        if key == "exception.type":
            kind = text
        else:
            told = f"{kind}: {text}" if kind and text else kind or text
            parts.append(told[:_ERROR_PART_MAX_CHARS])
            kind = ""
    if kind:
        parts.append(kind[:_ERROR_PART_MAX_CHARS])
    if result:
        parts.append(result[:_ERROR_PART_MAX_CHARS])
    text = ""
    for part in parts:
        if part and part not in text:
            text = f"{text}\n{part}" if text else part
    return text[:ERROR_TEXT_MAX_CHARS]


def canonical_tool_args(raw: str) -> str:
    """Tool arguments in a canonical form, so the same call compares equal however it was spelled.

    >>> canonical_tool_args('{"b": 1,  "a": {"y": 2, "x": 1}}')
    '{"a":{"x":1,"y":2},"b":1}'
    >>> canonical_tool_args('  not json  ')
    'not json'
    """
    try:
        return orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # not JSON, or nested beyond 255
        return raw.strip()


def args_hash_of(canonical_args: str) -> int:
    """A stable 64-bit hash of canonical arguments (the ``ToolArgsHash`` column), or of any text."""
    digest = hashlib.blake2b(canonical_args.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def is_schema_shaped(raw: str) -> bool:
    """Whether a ``gen_ai.tool.call.arguments`` value is a tool's JSON schema rather than a call's
    arguments (the rule: ``conventions.JSON_SCHEMA_KEYWORDS``).

    >>> is_schema_shaped('{"type": "object", "properties": {"q": {"type": "string"}}}')
    True
    >>> is_schema_shaped('{"type": "object", "properties": {"q": "x"}, "name": "n"}')
    False
    """
    if '"properties"' not in raw or not raw.lstrip().startswith("{"):
        return False  # the cheap test first: most arguments are not schemas
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    if type(value) is not dict or value.get("type") != "object":
        return False
    properties = value.get("properties")
    return (
        type(properties) is dict
        and all(type(p) is dict for p in properties.values())
        and JSON_SCHEMA_KEYWORDS.issuperset(value)
    )


def result_hash_of(
    result: str, is_error: bool, error_type: str, status_message: str, exception_pairs
) -> int:
    """A stable 64-bit hash of a tool call's outcome (the ``ToolResultHash`` column).

    The result text as sent (not canonicalised: one tool spells one outcome the same way, and a
    large result is not parsed); for a failed call, the error (type, status message, exception
    messages) with it, so the same failure hashes the same and a different one differently.
    """
    if is_error:
        messages = [text for key, text in exception_pairs or () if key == "exception.message"]
        result = "\x00".join(("error", error_type, status_message, *messages, result))
    return args_hash_of(result)


#: Bounds of ``OutputToolCalls`` (a model's output can be huge, and a span is hostile input):
#: calls kept per LLM span, characters of a tool name and of its arguments kept. The arguments'
#: hash is of all of them, so two long calls differing only at their end are still two calls.
MAX_OUTPUT_TOOL_CALLS = 32
_MAX_TOOL_NAME_CHARS = 256
MAX_OUTPUT_TOOL_ARGS_CHARS = 4096

_JSON_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'  # one JSON string, escapes included
_OUTPUT_MESSAGES_AT = b'"' + OUTPUT_MESSAGES_KEY.encode() + b'":'
_OUTPUT_MESSAGES_VALUE = re.compile(re.escape(_OUTPUT_MESSAGES_AT) + b"(" + _JSON_STRING + b")")
_INDEXED_TOOL_CALLS = tuple(
    (
        prefix.encode(),
        re.compile(
            b'"'
            + re.escape(prefix.encode())
            + rb"(\d{1,4})"
            + re.escape(middle.encode())
            + rb"(\d{1,4})"
            + re.escape(suffix.encode())
            + b'(name|arguments)":('
            + _JSON_STRING
            + b")"
        ),
    )
    for prefix, middle, suffix in OUTPUT_TOOL_CALL_KEYS
)


def _add_output_tool_calls(cols: dict) -> None:
    """``OutputToolCalls`` of a batch: for each LLM span, the tool calls its output asked for.

    Read from the attribute maps as JSON text (the C reader's fragments, or the reference
    reader's dicts serialised), so both readers give the same column. Most spans pay one list
    lookup; an LLM span one copy of its attribute text and a substring test before any parse.
    """
    kinds = cols["StepKind"]
    column = [""] * len(kinds)
    if "llm" in kinds:
        attributes, events = cols["SpanAttributes"], cols["EventsAttributes"]
        dumps = orjson.dumps
        for i, kind in enumerate(kinds):
            if kind == "llm":
                column[i] = output_tool_calls(
                    dumps(attributes[i]), dumps(events[i]) if events[i] else b""
                )
    cols["OutputToolCalls"] = column


def output_tool_calls(attributes: bytes, events: bytes = b"") -> str:
    """The tool calls an LLM span's output asked for, as the ``OutputToolCalls`` JSON text
    (``[{"name", "arguments", "args_hash"}, ...]``, arguments canonical as ``ToolArgs``), or "".

    ``attributes``: the span's attribute map as JSON text; ``events``: its events' attribute
    maps (a JSON list), where Strands puts ``gen_ai.output.messages``. Conventions:
    ``conventions.OUTPUT_MESSAGES_KEY`` and ``OUTPUT_TOOL_CALL_KEYS``. Malformed values are
    skipped; nothing here raises.

    >>> key = "llm.output_messages.0.message.tool_calls.0.tool_call.function."
    >>> span = {key + "name": "search", key + "arguments": '{"q": "refunds",  "n": 3}'}
    >>> [(c["name"], c["arguments"]) for c in orjson.loads(output_tool_calls(orjson.dumps(span)))]
    [('search', '{"n":3,"q":"refunds"}')]
    >>> output_tool_calls(orjson.dumps({"gen_ai.output.messages": "[{no json"}))
    ''
    """
    if b"tool_call" not in attributes and b"tool_call" not in events:
        return ""  # the common case: no tool call anywhere in the span
    calls: list[dict] = []
    for text in (attributes, events):
        at = text.find(_OUTPUT_MESSAGES_AT)
        while at > 0 and not calls:
            if text[at - 1] in b"{,":  # a key, not text inside another value
                match = _OUTPUT_MESSAGES_VALUE.match(text, at)
                if match:
                    _calls_from_messages(match.group(1), calls)
            at = text.find(_OUTPUT_MESSAGES_AT, at + 1)
        if calls:
            break
    if not calls:
        for prefix, pattern in _INDEXED_TOOL_CALLS:
            if prefix in attributes:
                _calls_from_indexed_keys(prefix, pattern, attributes, calls)
                if calls:
                    break
    return orjson.dumps(calls).decode() if calls else ""


def _calls_from_messages(quoted: bytes, calls: list) -> None:
    """Tool-call parts of a ``gen_ai.output.messages`` value (a JSON string of JSON)."""
    try:
        messages = orjson.loads(orjson.loads(quoted))
    except (orjson.JSONDecodeError, TypeError):  # not JSON, or not a string of it
        return
    if type(messages) is dict:
        messages = [messages]
    if type(messages) is not list:
        return
    for message in messages:
        parts = message.get("parts") if type(message) is dict else None
        if type(parts) is list:
            for part in parts:
                if type(part) is dict and part.get("type") == "tool_call":
                    _add_call(calls, part.get("name"), part.get("arguments"))


def _calls_from_indexed_keys(prefix: bytes, pattern: re.Pattern, text: bytes, calls: list) -> None:
    """Tool calls spread over indexed keys (``...N...M...name`` and ``...arguments``), in order."""
    found: dict[tuple[int, int], list] = {}
    key = b'"' + prefix
    at = text.find(key)
    while at > 0:  # bytes.find, then a match there: cheaper than a regex scan of a long prompt
        match = pattern.match(text, at) if text[at - 1] in b"{," else None  # not inside a value
        at = text.find(key, at + 1)
        if match is None:
            continue
        message, call, which, quoted = match.groups()
        try:
            value = orjson.loads(quoted)
        except orjson.JSONDecodeError:
            continue
        found.setdefault((int(message), int(call)), [None, None])[which == b"arguments"] = value
    for key in sorted(found):
        _add_call(calls, *found[key])


def _add_call(calls: list, name, arguments) -> None:
    """One call, its arguments canonical (an object, or the text of one) and bounded."""
    if type(name) is not str or not name.strip() or len(calls) >= MAX_OUTPUT_TOOL_CALLS:
        return
    if type(arguments) is str:
        args = canonical_tool_args(arguments) if arguments.strip() else ""
    elif arguments is None:
        args = ""
    else:
        try:
            args = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:  # nested beyond orjson's depth
            args = ""
    calls.append(
        {
            "name": name.strip()[:_MAX_TOOL_NAME_CHARS],
            "arguments": args[:MAX_OUTPUT_TOOL_ARGS_CHARS],
            "args_hash": args_hash_of(args) if args else 0,
        }
    )


_RAW_COLUMNS = COLUMNS[: COLUMNS.index("Tenant")]  # what the C reader builds
_AGENT_COLUMNS = _SPAN_COLUMNS[len(_RAW_COLUMNS) :]


def _load_reader():
    """The C reader, configured, or None (not built, or turned off by AGENTWATCH_NATIVE_READER=0)."""
    if os.environ.get("AGENTWATCH_NATIVE_READER", "1") == "0":
        return None
    try:
        # lazy: the C reader is optional (built only where a compiler was), and may be turned off
        from collector import _otlp_reader
    except ImportError:
        return None
    _otlp_reader.configure(
        _FIELD_PRIORITY, orjson.Fragment, SPAN_KIND_NAMES, STATUS_CODE_NAMES, _EMPTY
    )
    return _otlp_reader


_reader = _load_reader()
#: Which reader ``read_wire`` uses: "native" (the C extension) or "python" (the reference reader).
READER = "native" if _reader is not None else "python"
