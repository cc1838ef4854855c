"""Reading request bodies: one span that cannot be read is rejected alone, with its reason; only a
body whose structure cannot be followed is refused whole (``PayloadError``: 400 / INVALID_ARGUMENT).
Whatever the body, decoding and normalising raise nothing else (no 500 / UNKNOWN)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.consumer import PayloadError, Rejections
from collector.decode import decode_json, decode_protobuf
from collector.normalize import Normalizer
from tests.otlp import request, span
from tests.test_native_reader import SEEDS, ld, mutants


def names(request_or_body, decode=None) -> tuple[list[str], Rejections]:
    """Span names stored and the rejections, through the reference path (decode + normalize)."""
    rejections = Rejections()
    req = decode(request_or_body, rejections) if decode else request_or_body
    batch, _ = Normalizer().normalize(req, rejections)
    orjson.loads(batch.to_json())
    return batch.columns["SpanName"], rejections


# --- protobuf: values nested deeper than upb's limit --------------------------------------------


def nested_kvlist(depth: int) -> bytes:
    value = ld(1, b"leaf")
    for _ in range(depth):
        value = ld(6, ld(1, ld(1, b"k") + ld(2, value)))
    return value


def nested_array(depth: int) -> bytes:
    value = ld(1, b"leaf")
    for _ in range(depth):
        value = ld(5, ld(1, value))
    return value


def with_value(name: str, value: bytes) -> bytes:
    """A span (as bytes) with one attribute ``x`` holding ``value`` (an AnyValue's bytes)."""
    return span(name).SerializeToString() + ld(9, ld(1, b"x") + ld(2, value))


def body_of(*spans: bytes, resource: bytes = b"") -> bytes:
    scope_spans = ld(2, b"".join(ld(2, s) for s in spans))
    return ld(1, (ld(1, resource) if resource else b"") + scope_spans)


@pytest.mark.parametrize(
    "deep",
    [nested_kvlist(50), nested_array(100), nested_kvlist(1000)],
    ids=["kv50", "a100", "kv1k"],
)
def test_a_value_nested_too_deep_rejects_only_its_span(deep):
    """Issue 11, hole 9: upb's depth limit refused the whole request."""
    body = body_of(
        span("ok-1").SerializeToString(), with_value("deep", deep), span("ok-2").SerializeToString()
    )
    stored, rejections = names(body, decode_protobuf)
    assert stored == ["ok-1", "ok-2"]
    assert rejections.messages == [
        "span 1: values nested deeper than protobuf's limit of 100 messages in a field of its span"
    ]


def test_values_nested_within_the_limit_are_stored():
    stored, rejections = names(
        body_of(with_value("kv30", nested_kvlist(30)), with_value("a45", nested_array(45))),
        decode_protobuf,
    )
    assert stored == ["kv30", "a45"] and rejections.count == 0


def test_a_resource_nested_too_deep_rejects_its_spans_and_no_others():
    deep_resource = ld(1, ld(1, b"deep") + ld(2, nested_kvlist(60)))
    body = body_of(with_value("under", ld(1, b"v")), resource=deep_resource)
    body += body_of(span("elsewhere").SerializeToString())
    stored, rejections = names(body, decode_protobuf)
    assert stored == ["elsewhere"]
    assert "span 0: values nested deeper" in rejections.summary()
    assert "of its resource or scope" in rejections.summary()


def test_a_malformed_span_inside_sound_framing_is_rejected_alone():
    body = body_of(span("ok").SerializeToString(), b"\x0a\x05ab")  # a string cut short
    stored, rejections = names(body, decode_protobuf)
    assert stored == ["ok"] and rejections.count == 1
    assert rejections.messages[0].startswith("span 1: malformed protobuf")


@pytest.mark.parametrize("body", [b"\x0a\x05ab", b"\x0a\x80\x80\x80\x80\x80\x01", b"\x0b\x14"])
def test_broken_framing_is_still_a_payload_error(body):
    with pytest.raises(PayloadError, match="not a valid OTLP"):
        decode_protobuf(body, Rejections())


# --- OTLP/JSON ---------------------------------------------------------------------------------


def json_span(name: str, **extra) -> dict:
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": name,
        "startTimeUnixNano": "1763000000000000000",
        "endTimeUnixNano": "1763000000500000000",
        **extra,
    }


def json_body(*spans: dict | str, resource: dict | None = None) -> bytes:
    """A body of one resource and scope; a str span is inserted as raw JSON text."""
    texts = ", ".join(s if isinstance(s, str) else json.dumps(s) for s in spans)
    more = f', "resource": {json.dumps(resource)}' if resource else ""
    return f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{texts}]}}]{more}}}]}}'.encode()


def with_raw_value(name: str, raw_value: str) -> str:
    """A span whose attribute ``x`` has the AnyValue ``raw_value`` (JSON text, written as is)."""
    text = json.dumps(json_span(name, attributes=[{"key": "x", "value": {"stringValue": "@"}}]))
    return text.replace('{"stringValue": "@"}', raw_value)


def deep_json_value(levels: int) -> str:
    return '{"arrayValue": {"values": [' * levels + '{"stringValue": "x"}' + "]}}" * levels


@pytest.mark.parametrize(
    ("raw_value", "reason"),
    [
        ('{"stringValue": "\\ud800"}', "a string JSON cannot hold"),
        ('{"stringValue": "a\\udc00b"}', "a string JSON cannot hold"),
        ('{"doubleValue": 1e400}', "a number beyond the range of a double"),
        (deep_json_value(400), "a value nested deeper than 256 levels"),
        (deep_json_value(60), "attributes.value.values…: Message too deep"),
    ],
    ids=["lone high surrogate", "lone low surrogate", "1e400", "1200 levels", "180 levels"],
)
def test_a_json_value_that_cannot_be_read_rejects_only_its_span(raw_value, reason):
    """Issue 11, hole 9: a lone surrogate escape or nesting beyond orjson's 1024 levels refused
    the whole body (400). Rejected rather than repaired (U+FFFD): a session id or tool arguments
    changed in transit would be worse than a span refused with its reason, and protobuf
    exporters' invalid UTF-8 is rejected the same way."""
    body = json_body(json_span("ok-1"), with_raw_value("bad", raw_value), json_span("ok-2"))
    stored, rejections = names(body, decode_json)
    assert stored == ["ok-1", "ok-2"]
    assert rejections.count == 1 and rejections.messages[0].startswith(f"span 1: {reason}")


def test_a_surrogate_pair_escape_is_text():
    stored, rejections = names(json_body(json_span("\\ud83d\\ude00")), decode_json)
    assert rejections.count == 0 and stored == ["\\ud83d\\ude00"]
    stored, _ = names(
        json_body(with_raw_value("x", '{"stringValue": "\\ud83d\\ude00"}')), decode_json
    )
    assert stored == ["x"]


def test_a_resource_that_cannot_be_read_rejects_its_spans():
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "@"}}]}
    body = json_body(json_span("under"), resource=resource).replace(b'"@"', b'"\\udfff"')
    stored, rejections = names(body, decode_json)
    assert stored == [] and "a string JSON cannot hold" in rejections.summary()


def test_unknown_json_fields_are_ignored_as_otlp_requires():
    body = json_body(json_span("future", droppedFutureField={"a": 1}, kind=2))
    stored, rejections = names(body, decode_json)
    assert stored == ["future"] and rejections.count == 0


def test_a_bad_scope_rejects_its_own_spans_only():
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {"scope": {"name": 5}, "spans": [json_span("bad scope")]},
                    {"scope": {"name": "fine"}, "spans": [json_span("good scope")]},
                ]
            }
        ]
    }
    stored, rejections = names(orjson.dumps(doc), decode_json)
    assert stored == ["good scope"] and rejections.count == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"resourceSpans": ["x"]}', "resourceSpans entries must be JSON objects"),
        (b'{"resourceSpans": [{"scopeSpans": [1]}]}', "scopeSpans entries must be JSON objects"),
        (b'{"resourceSpans": [{"scopeSpans": {}}]}', "must be an array"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"a": "\\ud800", "b": [1, }', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_structure_above_the_spans_that_cannot_be_followed_is_a_payload_error(body, message):
    """Issue 11, hole 9: ``{"resourceSpans": ["x"]}`` raised AttributeError (500)."""
    with pytest.raises(PayloadError, match=message):
        decode_json(body, Rejections())


# --- fuzzing: no body raises anything but PayloadError ------------------------------------------

FUZZ = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["1763000000000000000", "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"]
    ),
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "resourceSpans",
                    "scopeSpans",
                    "spans",
                    "resource",
                    "scope",
                    "attributes",
                    "key",
                    "value",
                    "stringValue",
                    "intValue",
                    "doubleValue",
                    "arrayValue",
                    "kvlistValue",
                    "values",
                    "traceId",
                    "spanId",
                    "parentSpanId",
                    "name",
                    "kind",
                    "startTimeUnixNano",
                    "endTimeUnixNano",
                    "events",
                    "links",
                    "status",
                    "code",
                    "message",
                    "timeUnixNano",
                    "schemaUrl",
                    "droppedAttributesCount",
                    "x",
                ]
            ),  # fmt: skip
            children,
            max_size=4,
        ),
    ),
    max_leaves=25,
)


def read(body: bytes, decode) -> None:
    """What the pipeline does with a body: decode, normalise, serialise for the store."""
    rejections = Rejections()
    try:
        req = decode(body, rejections)
    except PayloadError:
        return
    batch, _ = Normalizer().normalize(req, rejections)
    orjson.loads(batch.to_json())
    orjson.dumps({k: batch.columns[k] for k in batch.columns})


def shapes_around(doc) -> list:
    """``doc`` as the body, and in the place of a resourceSpans, scopeSpans and span entry."""
    return [
        doc,
        {"resourceSpans": [doc]},
        {"resourceSpans": [{"scopeSpans": [doc]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [doc]}]}]},
    ]


@FUZZ
@given(json_values)
def test_random_json_documents_never_raise(doc):
    for shaped in shapes_around(doc):
        read(json.dumps(shaped).encode(), decode_json)


@FUZZ
@given(st.sampled_from(SEEDS).flatmap(lambda _: mutants()))
def test_mutated_protobuf_bodies_never_raise(body):
    read(body, decode_protobuf)


@FUZZ
@given(st.binary(max_size=64), st.sampled_from(SEEDS))
def test_random_bytes_in_a_request_never_raise(junk, seed):
    read(seed + junk, decode_protobuf)
    read(ld(1, ld(2, ld(2, junk))), decode_protobuf)  # a span of random bytes
    read(junk, decode_json)


def test_mutated_json_bodies_never_raise():
    doc = json_body(
        json_span(
            "a", attributes=[{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "5"}}]
        ),
        with_raw_value("b", deep_json_value(3)),
    )

    @FUZZ
    @given(st.integers(0, len(doc) - 1), st.binary(min_size=1, max_size=3))
    def check(at, junk):
        read(doc[:at] + junk + doc[at + len(junk) :], decode_json)

    check()


def test_a_request_built_by_the_protobuf_classes_reads_the_same_by_hand():
    """The hand-written framing reader (used after upb refuses a request) agrees with upb."""
    from collector.decode import _span_by_span

    req = request(span("a", {"k": "v"}), span("b"), resource={"service.name": "svc"})
    req.resource_spans[0].schema_url = "https://x"
    req.resource_spans[0].scope_spans[0].schema_url = "https://y"
    assert _span_by_span(req.SerializeToString(), Rejections()) == req
