"""Decode OTLP trace payloads (protobuf or OTLP/JSON) into an ``ExportTraceServiceRequest``.

Bad input loses nothing else: where one span is malformed (invalid UTF-8 in a string, a bad hex id,
a value of the wrong JSON type) that span is dropped with a reason and its neighbours are kept. Only
a payload that cannot be read at all raises ``PayloadError`` (the receivers answer 400 /
INVALID_ARGUMENT, which clients must not retry).
"""

from __future__ import annotations

import base64
import binascii

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.normalize import Rejections

ExportTraceServiceRequest = trace_service_pb2.ExportTraceServiceRequest


class PayloadError(ValueError):
    """The whole payload is unreadable; the message says why. Never worth retrying."""


def decode_protobuf(body: bytes, rejections: Rejections) -> ExportTraceServiceRequest:
    """Parse a protobuf request; spans with invalid UTF-8 are rejected one by one."""
    try:
        return ExportTraceServiceRequest.FromString(body)
    except DecodeError as strict_error:
        # upb refuses the whole message for one bad string. Re-read it with strings as bytes to
        # find out whether the structure is sound and which spans are at fault.
        try:
            lenient = _Lenient.request.FromString(body)
        except DecodeError:
            raise PayloadError(
                f"not a valid OTLP ExportTraceServiceRequest: {strict_error}"
            ) from None
    return _drop_invalid_utf8(lenient, rejections)


def _drop_invalid_utf8(lenient, rejections: Rejections) -> ExportTraceServiceRequest:
    """The request without the spans that hold, or sit under a resource or scope that holds,
    a string that is not UTF-8; each dropped span is counted with its reason."""
    kept = _Lenient.request()
    index = -1
    for rs in lenient.resource_spans:
        resource_ok = _valid(_Strict.resource, rs.resource) and _utf8(rs.schema_url)
        kept_rs = None
        for ss in rs.scope_spans:
            scope_ok = resource_ok and _valid(_Strict.scope, ss.scope) and _utf8(ss.schema_url)
            spans = []
            for span in ss.spans:
                index += 1
                if scope_ok and _valid(trace_pb2.Span, span):
                    spans.append(span)
                else:
                    where = "its span" if scope_ok else "its resource or scope"
                    rejections.add(f"span {index}: invalid UTF-8 in a string field of {where}")
            if spans:
                if kept_rs is None:
                    kept_rs = kept.resource_spans.add(
                        resource=rs.resource, schema_url=rs.schema_url
                    )
                kept_rs.scope_spans.add(scope=ss.scope, schema_url=ss.schema_url).spans.extend(
                    spans
                )
    return ExportTraceServiceRequest.FromString(kept.SerializeToString())


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _valid(strict_cls, lenient_msg) -> bool:
    try:
        strict_cls.FromString(lenient_msg.SerializeToString())
    except DecodeError:
        return False
    return True


class _Strict:
    resource = resource_pb2.Resource
    scope = common_pb2.InstrumentationScope


def _build_lenient_classes():
    """Copies of the OTLP messages with every ``string`` field declared ``bytes``.

    Both have the same wire format, so this parses any structurally valid request whatever its
    string contents, and lets us reject only the spans whose strings are not UTF-8.
    """
    pool = descriptor_pool.DescriptorPool()
    prefix = "agentwatch_lenient."
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
    name = prefix + "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def _all_messages(messages):
    for m in messages:
        yield m
        yield from _all_messages(m.nested_type)


class _Lenient:
    request = _build_lenient_classes()


# --- OTLP/JSON --------------------------------------------------------------------------------

_ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def decode_json(body: bytes, rejections: Rejections) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON (hex ids, enums as integers, 64-bit integers as strings), span by span."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object with a resourceSpans array")
    request = ExportTraceServiceRequest()
    index = -1
    for rs_doc in _list(doc, "resourceSpans", "resource_spans", where="request"):
        rs = request.resource_spans.add()
        problem = _parse_into(rs_doc, "resource", resource_pb2.Resource, rs.resource)
        if "schemaUrl" in rs_doc or "schema_url" in rs_doc:
            rs.schema_url = str(rs_doc.get("schemaUrl", rs_doc.get("schema_url", "")))
        for ss_doc in _list(rs_doc, "scopeSpans", "scope_spans", where="resourceSpans"):
            ss = rs.scope_spans.add()
            problem = problem or _parse_into(
                ss_doc, "scope", common_pb2.InstrumentationScope, ss.scope
            )
            for span_doc in _list(ss_doc, "spans", "spans", where="scopeSpans"):
                index += 1
                if problem:
                    rejections.add(f"span {index}: {problem}")
                    continue
                try:
                    parsed = json_format.ParseDict(_span_ids_to_base64(span_doc), trace_pb2.Span())
                except (json_format.ParseError, ValueError, TypeError) as exc:
                    rejections.add(f"span {index}: {_short(exc)}")
                else:
                    ss.spans.append(parsed)
    return request


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
        target.CopyFrom(json_format.ParseDict(sub, cls()))
    except (json_format.ParseError, ValueError, TypeError) as exc:
        return f"invalid {key}: {_short(exc)}"
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


def _short(exc: Exception) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= 200 else text[:200] + "…"
