"""Decode OTLP trace payloads (protobuf or OTLP/JSON) into an ``ExportTraceServiceRequest``.

Bad input loses nothing else: where one span is malformed (invalid UTF-8 in a string, a bad hex id,
a value of the wrong JSON type) that span is dropped with a reason and its neighbours are kept. Only
a payload that cannot be read at all raises ``PayloadError`` (the receivers answer 400 /
INVALID_ARGUMENT, which clients must not retry).
"""

from __future__ import annotations

import base64
import binascii
import re

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.consumer import PayloadError, Rejections

ExportTraceServiceRequest = trace_service_pb2.ExportTraceServiceRequest


def decode_protobuf(body: bytes, rejections: Rejections) -> ExportTraceServiceRequest:
    """Parse a protobuf request; a span that cannot be read is rejected alone, with its reason."""
    try:
        return ExportTraceServiceRequest.FromString(body)
    except DecodeError as strict_error:
        error = strict_error
    # upb refuses the whole request for one bad span: a string that is not UTF-8, or values nested
    # deeper than its limit (100 messages). Follow the request's framing by hand down to the spans
    # and parse each resource, scope and span on its own, so that only the spans at fault go.
    try:
        return _span_by_span(body, rejections)
    except DecodeError:
        raise PayloadError(f"not a valid OTLP ExportTraceServiceRequest: {error}") from None


def _span_by_span(body: bytes, rejections: Rejections) -> ExportTraceServiceRequest:
    """The request without the spans that cannot be read, or that sit under a resource or scope
    that cannot be; each dropped span is counted with its reason. DecodeError: broken framing."""
    request = ExportTraceServiceRequest()
    index = -1
    for rs_raw in _submessages(body).get(1, ()):
        rs_fields = _submessages(rs_raw)
        rs = request.resource_spans.add()
        problem = _read_into(rs.resource, b"".join(rs_fields.get(1, ())), _Lenient.resource)
        problem = problem or _read_text(rs, "schema_url", rs_fields.get(3))
        for ss_raw in rs_fields.get(2, ()):
            ss_fields = _submessages(ss_raw)
            ss = rs.scope_spans.add()
            scope_problem = problem or _read_into(
                ss.scope, b"".join(ss_fields.get(1, ())), _Lenient.scope
            )
            scope_problem = scope_problem or _read_text(ss, "schema_url", ss_fields.get(3))
            for span_raw in ss_fields.get(2, ()):
                index += 1
                if scope_problem:
                    rejections.add(f"span {index}: {scope_problem} of its resource or scope")
                    continue
                span = ss.spans.add()
                span_problem = _read_into(span, span_raw, _Lenient.span)
                if span_problem:
                    del ss.spans[-1]
                    rejections.add(f"span {index}: {span_problem} of its span")
    return request


def _submessages(raw: bytes) -> dict[int, list[bytes]]:
    """The length-delimited fields of one message, by field number, in order. Other fields are
    skipped, as upb skips them when their number or wire type is not the declared one."""
    fields: dict[int, list[bytes]] = {}
    pos, end = 0, len(raw)
    while pos < end:
        tag, pos = _varint(raw, pos, 5)
        if tag >> 3 == 0:
            raise DecodeError("field number 0")
        start = pos
        pos = _skip_value(raw, pos, tag)
        if tag & 7 == 2:
            fields.setdefault(tag >> 3, []).append(raw[_varint(raw, start, 5)[1] : pos])
        if pos > end:
            raise DecodeError("truncated")
    return fields


def _varint(raw: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * max_bytes, 7):
        if pos >= len(raw):
            raise DecodeError("truncated varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise DecodeError("varint too long")


def _skip_value(raw: bytes, pos: int, tag: int) -> int:
    """The position after the value of the field ``tag`` that starts at ``pos``."""
    wire = tag & 7
    if wire == 0:
        return _varint(raw, pos, 10)[1]
    if wire == 1 or wire == 5:
        return pos + (8 if wire == 1 else 4)
    if wire == 2:
        length, pos = _varint(raw, pos, 5)
        return pos + length
    if wire == 3:
        return _skip_group(raw, pos, tag >> 3)
    raise DecodeError(f"wire type {wire}")


def _skip_group(raw: bytes, pos: int, number: int) -> int:
    """The position after the end-group tag of the group ``number`` that starts at ``pos``."""
    while True:
        tag, pos = _varint(raw, pos, 5)
        if tag & 7 == 4:
            if tag >> 3 != number:
                raise DecodeError("mismatched end of group")
            return pos
        pos = _skip_value(raw, pos, tag)
        if pos > len(raw):
            raise DecodeError("truncated group")


def _read_into(target, raw: bytes, lenient_cls) -> str:
    """Parse ``raw`` into ``target``; "" or why it cannot be read (the message's end is added)."""
    try:
        target.ParseFromString(raw)
    except DecodeError as exc:
        if "MaxDepth" in str(exc):
            return "values nested deeper than protobuf's limit of 100 messages in a field"
        try:
            lenient_cls.FromString(raw)
        except DecodeError:
            return f"malformed protobuf ({exc}) in a field"
        return "invalid UTF-8 in a string field"
    return ""


def _read_text(target, name: str, raws: list[bytes] | None) -> str:
    """A string field (the last occurrence wins, as in protobuf); "" or why it cannot be read."""
    if raws:
        try:
            setattr(target, name, raws[-1].decode())
        except UnicodeDecodeError:
            return "invalid UTF-8 in a string field"
    return ""


_LENIENT = "agentwatch_lenient."


def _build_lenient_pool():
    """Copies of the OTLP messages with every ``string`` field declared ``bytes``.

    Both have the same wire format, so these parse any structurally valid message whatever its
    string contents, and tell invalid UTF-8 apart from other reasons a message cannot be read.
    """
    pool = descriptor_pool.DescriptorPool()
    prefix = _LENIENT
    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        proto.name = prefix + proto.name
        proto.package = prefix + proto.package
        proto.dependency[:] = [prefix + d for d in proto.dependency]
        proto.ClearField("service")
        for message in _all_messages(proto.message_type):
            for f in message.field:
                if f.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                    f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                if f.type_name.startswith(".opentelemetry."):
                    f.type_name = "." + prefix + f.type_name[1:]
        pool.Add(proto)
    return pool


def _lenient(pool, name: str):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(_LENIENT + name))


def _all_messages(messages):
    for m in messages:
        yield m
        yield from _all_messages(m.nested_type)


class _Lenient:
    _pool = _build_lenient_pool()
    resource = _lenient(_pool, "opentelemetry.proto.resource.v1.Resource")
    scope = _lenient(_pool, "opentelemetry.proto.common.v1.InstrumentationScope")
    span = _lenient(_pool, "opentelemetry.proto.trace.v1.Span")


# --- OTLP/JSON --------------------------------------------------------------------------------

_ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def decode_json(body: bytes, rejections: Rejections) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON (hex ids, enums as integers, 64-bit integers as strings), span by span.

    Unknown fields are ignored, as the OTLP/JSON specification requires of receivers."""
    defused = False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # One bad value (a lone surrogate escape, nesting beyond orjson's 1024 levels, 1e400)
        # fails the whole document: mark such values and reject only the spans that hold them.
        marked = _mark_unreadable_values(body)
        try:
            doc = orjson.loads(marked) if marked is not None else None
        except orjson.JSONDecodeError:
            doc = None
        if doc is None:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        defused = True
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object with a resourceSpans array")
    request = ExportTraceServiceRequest()
    index = -1
    for rs_doc in _list(doc, "resourceSpans", "resource_spans", where="request"):
        scopes = _list(rs_doc, "scopeSpans", "scope_spans", where="resourceSpans")
        rs = request.resource_spans.add()
        problem = _parse_into(rs_doc, "resource", resource_pb2.Resource, rs.resource)
        if "schemaUrl" in rs_doc or "schema_url" in rs_doc:
            rs.schema_url = str(rs_doc.get("schemaUrl", rs_doc.get("schema_url", "")))
        if defused and not problem:
            problem = _marked({k: v for k, v in rs_doc.items() if k not in _SCOPE_SPANS})
        for ss_doc in scopes:
            spans = _list(ss_doc, "spans", "spans", where="scopeSpans")
            ss = rs.scope_spans.add()
            scope_problem = problem or _parse_into(
                ss_doc, "scope", common_pb2.InstrumentationScope, ss.scope
            )
            if defused and not scope_problem:
                scope_problem = _marked({k: v for k, v in ss_doc.items() if k != "spans"})
            for span_doc in spans:
                index += 1
                if scope_problem:
                    rejections.add(f"span {index}: {scope_problem}")
                    continue
                why = _marked(span_doc) if defused else ""
                if why:
                    rejections.add(f"span {index}: {why}")
                    continue
                try:
                    parsed = json_format.ParseDict(
                        _span_ids_to_base64(span_doc), trace_pb2.Span(), ignore_unknown_fields=True
                    )
                except (json_format.ParseError, ValueError, TypeError) as exc:
                    rejections.add(f"span {index}: {_short(exc)}")
                else:
                    ss.spans.append(parsed)
    return request


_SCOPE_SPANS = ("scopeSpans", "scope_spans")


def _list(doc, camel: str, snake: str, where: str) -> list:
    if not isinstance(doc, dict):
        raise PayloadError(f"{where} entries must be JSON objects")
    value = doc.get(camel, doc.get(snake, []))
    if not isinstance(value, list):
        raise PayloadError(f"{where}.{camel} must be an array, got {type(value).__name__}")
    return value


def _parse_into(doc: dict, key: str, cls, target) -> str:
    sub = doc.get(key)
    if sub is None:
        return ""
    try:
        target.CopyFrom(json_format.ParseDict(sub, cls(), ignore_unknown_fields=True))
    except (json_format.ParseError, ValueError, TypeError) as exc:
        return f"invalid {key}: {_short(exc)}"
    return ""


# Values orjson cannot read, replaced by a marker string each (then the span holding one is
# rejected). A span's own message nests at most 100 deep (json_format's limit), ~160 JSON levels.
_MAX_JSON_DEPTH = 256
_MARKS = {
    "\x00agentwatch:too-deep\x00": f"a value nested deeper than {_MAX_JSON_DEPTH} levels",
    "\x00agentwatch:bad-string\x00": "a string JSON cannot hold (a lone surrogate escape or "
    "invalid UTF-8)",
    "\x00agentwatch:number-too-large\x00": "a number beyond the range of a double",
}
_TOO_DEEP, _BAD_STRING, _TOO_LARGE = (orjson.dumps(mark) for mark in _MARKS)
_JSON_TOKEN = re.compile(
    rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]|[\]}]|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?', re.DOTALL
)


def _mark_unreadable_values(body: bytes) -> bytes | None:
    """``body`` with each value orjson refuses replaced by a marker; None if there is none."""
    out = []
    done = 0  # body[:done] is in out
    depth = 0
    deep_from = -1  # where the value nested too deep starts, while inside it
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        first = token[0]
        if first == 0x5B or first == 0x7B:  # [ {
            depth += 1
            if depth > _MAX_JSON_DEPTH and deep_from < 0:
                deep_from = match.start()
        elif first == 0x5D or first == 0x7D:  # ] }
            depth -= 1
            if depth == _MAX_JSON_DEPTH and deep_from >= 0:
                out += (body[done:deep_from], _TOO_DEEP)
                done, deep_from = match.end(), -1
        elif deep_from < 0:
            if first == 0x22:  # a string: cheap test first, orjson decides
                suspect = not token.isascii() or b"\\u" in token
                mark = _BAD_STRING
            else:
                suspect = len(token) > 300 or b"e" in token or b"E" in token
                mark = _TOO_LARGE
            if suspect:
                try:
                    orjson.loads(token)
                except orjson.JSONDecodeError:
                    out += (body[done : match.start()], mark)
                    done = match.end()
    if not out:
        return None
    out.append(body[done:])
    return b"".join(out)


def _marked(doc) -> str:
    """The reason for the first marker in ``doc`` (see ``_mark_unreadable_values``), or ""."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if item in _MARKS:
                return _MARKS[item]
        elif type(item) is dict:
            stack += item.keys()
            stack += item.values()
        elif type(item) is list:
            stack += item
    return ""


def _span_ids_to_base64(span: dict) -> dict:
    """OTLP/JSON ids are hex; protobuf's JSON mapping expects base64 for bytes fields."""
    if not isinstance(span, dict):
        raise ValueError("span must be a JSON object")
    span = dict(span)
    for camel, length in _ID_LENGTHS.items():
        snake = {"traceId": "trace_id", "spanId": "span_id", "parentSpanId": "parent_span_id"}[
            camel
        ]
        for key in (camel, snake):
            if key in span:
                span[key] = _hex_to_base64(span[key], key, length)
    if "links" in span and isinstance(span["links"], list):
        links = []
        for link in span["links"]:
            if isinstance(link, dict):
                link = dict(link)
                for key, length in (
                    ("traceId", 16),
                    ("spanId", 8),
                    ("trace_id", 16),
                    ("span_id", 8),
                ):
                    if key in link:
                        link[key] = _hex_to_base64(link[key], f"links.{key}", length)
            links.append(link)
        span["links"] = links
    return span


def _hex_to_base64(value, key: str, length: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a hex string, got {type(value).__name__}")
    if value == "" and key in ("parentSpanId", "parent_span_id"):
        return ""
    try:
        raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise ValueError(f"{key} must be {2 * length} hex characters, got {value[:40]!r}") from None
    if len(raw) != length:
        raise ValueError(f"{key} must be {2 * length} hex characters, got {len(value)}")
    return base64.b64encode(raw).decode()


_FAILED_TO_PARSE = re.compile(r"Failed to parse (\w+) field: ")


def _short(exc: Exception) -> str:
    """The error in one line of at most 200 characters; json_format's chain of "Failed to parse
    X field: " (one per level, 100 of them for a value nested too deep) becomes a short path."""
    text = str(exc).replace("\n", " ")
    path = []
    while match := _FAILED_TO_PARSE.match(text):
        path.append(match[1])
        text = text[match.end() :]
    if path:
        text = f"{'.'.join(path[:3])}{'…' if len(path) > 3 else ''}: {text.rstrip('.')}"
    return text if len(text) <= 200 else text[:200] + "…"
