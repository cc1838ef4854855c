"""The ClickHouse-compatible SQL endpoint (port 8123) as its users meet it: curl-style requests,
clickhouse-connect, and a second agentwatch collector that uses it as its ClickHouse server."""

from __future__ import annotations

import base64
import gzip

import clickhouse_connect
import lz4.frame
import orjson
import pytest
import requests
from clickhouse_connect.driver.exceptions import DatabaseError
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from collector.store.migrations import migration_files

# What clickhouse-connect adds to every request; none of it may make a query fail.
CLIENT_PARAMS = {
    "wait_end_of_query": "1",
    "send_progress_in_http_headers": "1",
    "http_headers_progress_interval_ms": "120000",
    "cancel_http_readonly_queries_on_client_close": "1",
    "date_time_input_format": "best_effort",
    "cast_string_to_dynamic_use_inference": "1",
    "client_protocol_version": "54405",
    "session_id": "3f1c2a5e-0000-4000-8000-000000000000",
    "session_timeout": "60",
    "query_id": "q-1",
    "some_setting_this_server_never_heard_of": "1",
}
# What migrations create, dependants first (so each DROP is allowed).


def export_agent_trace(grpc_endpoint: str, service: str, session: str) -> None:
    """An agent turn (agent span + one LLM call) through the real OTel SDK's OTLP gRPC exporter."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=grpc_endpoint, insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.sql_endpoint")
    agent = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support",
        "session.id": session,
    }
    llm = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
    }
    with tracer.start_as_current_span("invoke_agent support", attributes=agent):
        with tracer.start_as_current_span("chat gpt-4o", attributes=llm):
            pass
    provider.shutdown()


def client_for(running, **kwargs):
    return clickhouse_connect.get_client(host="127.0.0.1", port=running.ports["sql"], **kwargs)


def assert_clickhouse_error(response: requests.Response, status: int, code: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["X-ClickHouse-Exception-Code"] == str(code)
    assert response.text.startswith(f"Code: {code}. DB::Exception: "), response.text


# --- curl-style requests -----------------------------------------------------------------------


def test_ping_and_bare_get_answer_ok(collector):
    assert requests.get(f"{collector.sql_url}/ping").text == "Ok.\n"
    assert requests.get(f"{collector.sql_url}/").text == "Ok.\n"


def test_query_by_get_by_post_body_and_by_query_param_with_the_rest_in_the_body(collector):
    url = collector.sql_url
    assert requests.get(url, params={"query": "SELECT 1 + 1"}).text == "2\n"
    assert requests.post(url, data="SELECT 'from the body'").text == "from the body\n"
    # ClickHouse joins ?query= and the body with a newline: the body continues the statement
    assert requests.post(url, params={"query": "SELECT 40 +"}, data="2").text == "42\n"
    # curl -d sends a form content type; the body is still the query, not a form
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert requests.post(url, data="SELECT 'curl -d'", headers=form).text == "curl -d\n"


def test_default_format_and_format_clause(collector):
    url = collector.sql_url
    plain = requests.get(url, params={"query": "SELECT 1 AS n, 'a' AS s"})
    assert plain.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert plain.headers["Content-Type"].startswith("text/tab-separated-values")
    assert plain.text == "1\ta\n"

    as_json = requests.post(
        url, params={"default_format": "JSONEachRow"}, data="SELECT number AS n FROM numbers(3)"
    )
    assert as_json.headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert as_json.headers["Content-Type"].startswith("application/json")
    assert [orjson.loads(line) for line in as_json.text.splitlines()] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]

    # FORMAT in the query wins over default_format, as in ClickHouse
    csv = requests.post(
        url, params={"default_format": "JSON"}, data="SELECT 1 AS n FORMAT CSVWithNames"
    )
    assert csv.headers["X-ClickHouse-Format"] == "CSVWithNames"
    assert csv.headers["Content-Type"].startswith("text/csv")
    assert csv.text == '"n"\n1\n'


def test_query_parameters_are_bound_not_spliced(collector):
    hostile = "x'); DROP TABLE otel_traces; --"
    response = requests.post(
        collector.sql_url,
        params={"param_name": hostile, "param_n": "41", "default_format": "JSONEachRow"},
        data="SELECT {name:String} AS name, {n:UInt8} + 1 AS next",
    )
    assert response.status_code == 200, response.text
    assert orjson.loads(response.text) == {"name": hostile, "next": 42}
    assert collector.query("EXISTS TABLE otel_traces") == [{"result": 1}]


def test_response_headers_like_a_server(collector):
    response = requests.post(
        collector.sql_url,
        params={"query_id": "my-query-7"},
        data="SELECT sum(number) FROM numbers(10)",
    )
    assert response.text == "45\n"
    assert response.headers["X-ClickHouse-Query-Id"] == "my-query-7"
    assert orjson.loads(response.headers["X-ClickHouse-Summary"])["read_rows"] == "10"
    assert response.headers["X-ClickHouse-Server-Display-Name"]
    timezone = requests.post(collector.sql_url, data="SELECT timezone()").text.strip()
    assert response.headers["X-ClickHouse-Timezone"] == timezone
    generated = requests.post(collector.sql_url, data="SELECT 1").headers["X-ClickHouse-Query-Id"]
    assert generated and generated != "my-query-7"


def test_settings_in_the_url_apply_and_client_transport_parameters_are_accepted(collector):
    url, query = collector.sql_url, "SELECT toUInt64(7) AS n FORMAT JSONEachRow"
    assert requests.post(url, data=query).text == '{"n":7}\n'
    quoted = requests.post(url, params={"output_format_json_quote_64bit_integers": "1"}, data=query)
    assert quoted.text == '{"n":"7"}\n'

    response = requests.post(url, params=CLIENT_PARAMS, data=query)
    assert response.status_code == 200, response.text
    assert response.text == '{"n":7}\n'


def test_http_compression_only_when_asked(collector):
    query = "SELECT number FROM numbers(2000)"
    accept = {"Accept-Encoding": "gzip"}
    compressed = requests.post(
        collector.sql_url, params={"enable_http_compression": "1"}, data=query, headers=accept
    )
    assert compressed.headers.get("Content-Encoding") == "gzip"
    assert compressed.text.splitlines()[-1] == "1999"  # requests undid the gzip
    plain = requests.post(collector.sql_url, data=query, headers=accept)
    assert "Content-Encoding" not in plain.headers


@pytest.mark.parametrize(
    ("sql", "params", "status", "code"),
    [
        ("SELECT * FROM no_such_table", {}, 404, 60),  # UNKNOWN_TABLE
        ("SELEC 1", {}, 400, 62),  # SYNTAX_ERROR
        ("SELECT no_such_function(1)", {}, 404, 46),  # UNKNOWN_FUNCTION
        ("SELECT 1", {"database": "analytics"}, 404, 81),  # UNKNOWN_DATABASE
        ("", {}, 400, 62),  # empty query
        (
            "SELECT 1",
            {"default_format": "Dataframe"},
            404,
            73,
        ),  # UNKNOWN_FORMAT, not a Python object
        ("SELECT 1", {"compress": "1"}, 501, 48),  # ClickHouse's own block compression
    ],
)
def test_errors_carry_clickhouse_codes_and_statuses(collector, sql, params, status, code):
    assert_clickhouse_error(requests.post(collector.sql_url, params=params, data=sql), status, code)


def test_read_only_by_default_refuses_every_write(collector):
    url = collector.sql_url
    refused = [
        ({"query": "INSERT INTO schema_migrations (version, name) FORMAT CSV"}, "99,evil\n"),
        ({}, "INSERT INTO schema_migrations (version, name) VALUES (99, 'evil')"),
        ({}, "INSERT INTO schema_migrations SELECT 99, 'evil', now64(3)"),
        ({}, "DROP TABLE otel_traces"),
        ({}, "CREATE TABLE evil (x UInt8) ENGINE = Memory"),
        ({}, "ALTER TABLE otel_traces DELETE WHERE 1"),
        ({}, "TRUNCATE TABLE schema_migrations"),
        ({}, "SET readonly = 0"),
        ({"readonly": "0"}, "DROP TABLE otel_traces"),  # a URL setting cannot lift it
    ]
    for params, body in refused:
        response = requests.post(url, params=params, data=body)
        assert_clickhouse_error(response, 500, 164)  # READONLY: a 500, as from ClickHouse
        assert "sql_readonly: false" in response.text, (body, response.text)
    # several statements in one request: ClickHouse refuses them, and here they could hide a write
    multi = requests.post(url, data="SELECT 1; DROP TABLE otel_traces")
    assert_clickhouse_error(multi, 500, 164)
    assert "one statement" in multi.text

    assert collector.query("SELECT version FROM schema_migrations ORDER BY version") == [
        {"version": version} for version, _, _ in migration_files()
    ]  # the refused INSERT into schema_migrations added nothing
    assert collector.query("EXISTS TABLE otel_traces") == [{"result": 1}]
    assert collector.query("EXISTS TABLE evil") == [{"result": 0}]


def test_sql_token_is_the_password(collector_factory):
    with collector_factory(sql_token="s3cret") as running:
        url = running.sql_url
        assert requests.get(f"{url}/ping").text == "Ok.\n"  # health checks need no credentials

        missing = requests.post(url, data="SELECT 1")
        assert_clickhouse_error(missing, 401, 516)
        assert "sql_token" in missing.text
        assert_clickhouse_error(
            requests.post(url, data="SELECT 1", auth=("default", "wrong")), 403, 516
        )

        basic_any_user = requests.post(url, data="SELECT 1", auth=("grafana", "s3cret"))
        assert basic_any_user.text == "1\n"
        key_header = requests.post(url, data="SELECT 2", headers={"X-ClickHouse-Key": "s3cret"})
        assert key_header.text == "2\n"
        url_param = requests.get(url, params={"query": "SELECT 3", "password": "s3cret"})
        assert url_param.text == "3\n"

        with pytest.raises(DatabaseError) as refused:
            client_for(running, password="wrong")
        assert refused.value.code == 516
        assert client_for(running, password="s3cret").command("SELECT 4") == 4
        # it also sends "Basic default:" next to these, which must not hide them
        assert client_for(running, headers={"X-ClickHouse-Key": "s3cret"}).command("SELECT 5") == 5
        assert client_for(running, access_token="s3cret").command("SELECT 6") == 6


def test_without_a_token_any_credentials_work(collector):
    header = "Basic " + base64.b64encode(b"someone:anything").decode()
    assert (
        requests.post(collector.sql_url, data="SELECT 1", headers={"Authorization": header}).text
        == "1\n"
    )


# --- clickhouse-connect --------------------------------------------------------------------------


def test_clickhouse_connect_reads_ingested_spans(collector):
    export_agent_trace(collector.grpc_endpoint, "support-bot", "sess-42")
    collector.wait_for_rows("SELECT 1 FROM otel_traces", 2)

    client = client_for(collector, compress=False)
    assert (
        client.server_version
        == requests.post(collector.sql_url, data="SELECT version()").text.strip()
    )
    result = client.query(
        "SELECT SpanName, Model, InputTokens, SpanAttributes FROM otel_traces"
        " WHERE ServiceName = {service:String} ORDER BY SpanName",
        parameters={"service": "support-bot"},
    )
    assert [row[:3] for row in result.result_rows] == [
        ("chat gpt-4o", "gpt-4o", 12),
        ("invoke_agent support", "", 0),
    ]
    assert result.result_rows[1][3]["session.id"] == "sess-42"  # a Map comes back as a dict
    assert client.command("SELECT count() FROM otel_traces WHERE SessionId = 'sess-42'") == 1

    frame = client.query_df("SELECT SpanName, OutputTokens FROM otel_traces ORDER BY SpanName")
    assert frame["OutputTokens"].tolist() == [5, 0]
    table = client.query_arrow("SELECT SpanName FROM otel_traces ORDER BY SpanName")
    assert table.column("SpanName").to_pylist() == ["chat gpt-4o", "invoke_agent support"]

    # compressed responses, and long parameters sent as a multipart form
    for other in (
        client_for(collector, compress=True),
        client_for(collector, form_encode_query_params=True),
    ):
        rows = other.query(
            "SELECT AgentName FROM agent_spans"
            " WHERE SessionId = {s:String} AND SpanName = {n:String}",
            parameters={"s": "sess-42", "n": "invoke_agent support"},
        ).result_rows
        assert rows == [("support",)]


def test_clickhouse_connect_cannot_write_to_a_read_only_endpoint(collector):
    client = client_for(collector)
    with pytest.raises(DatabaseError) as dropped:
        client.command("DROP TABLE otel_traces")
    assert dropped.value.code == 164
    with pytest.raises(DatabaseError) as inserted:
        client.insert("schema_migrations", [[99, "evil"]], column_names=["version", "name"])
    assert inserted.value.code == 164
    assert collector.query("SELECT count() AS n FROM schema_migrations") == [
        {"n": len(migration_files())}
    ]


def test_clickhouse_connect_writes_when_writes_are_enabled(collector_factory):
    with collector_factory(sql_readonly=False) as running:
        client = client_for(running, compress=False)
        client.command(
            "CREATE TABLE notes (id UInt32, text String, at DateTime64(3))"
            " ENGINE = MergeTree ORDER BY id"
        )
        assert (
            client.insert(
                "notes", [[1, "native"], [2, "block"]], column_names=["id", "text"]
            ).written_rows
            == 2
        )
        raw = client.raw_insert(
            "notes",
            ["id", "text"],
            insert_block=b'{"id":[3,4],"text":["json","columns"]}',
            fmt="JSONColumns",
        )
        assert raw.written_rows == 2
        lz4_client = client_for(running, compress="lz4")  # the body goes as lz4 frames
        lz4_client.insert("notes", [[5, "lz4"]], column_names=["id", "text"])
        zstd_client = client_for(running, compress="zstd")
        zstd_client.raw_insert(
            "notes", ["id", "text"], insert_block=b'{"id":[6],"text":["zstd"]}', fmt="JSONColumns"
        )
        assert client.command("INSERT INTO notes (id, text) VALUES (7, 'values')").written_rows == 1
        client.command("INSERT INTO notes (id, text) SELECT 8, 'select'")

        rows = client.query("SELECT id, text FROM notes ORDER BY id").result_rows
        assert rows == [
            (1, "native"), (2, "block"), (3, "json"), (4, "columns"), (5, "lz4"), (6, "zstd"),
            (7, "values"), (8, "select"),
        ]  # fmt: skip
        client.command("DROP TABLE notes")
        assert running.query("EXISTS TABLE notes") == [{"result": 0}]


def test_writes_need_post_and_never_change_the_shared_session(collector_factory):
    with collector_factory(sql_readonly=False) as running:
        url = running.sql_url
        by_get = requests.get(url, params={"query": "DROP TABLE otel_traces"})
        assert_clickhouse_error(by_get, 500, 164)  # as ClickHouse: GET implies readonly
        assert "POST" in by_get.text
        by_setting = requests.post(url, params={"readonly": "1"}, data="DROP TABLE otel_traces")
        assert_clickhouse_error(by_setting, 500, 164)
        # SET / USE would change the store connection ingestion uses
        assert_clickhouse_error(requests.post(url, data="SET max_threads = 1"), 501, 48)
        assert_clickhouse_error(requests.post(url, data="USE system"), 501, 48)
        assert running.query("EXISTS TABLE otel_traces") == [{"result": 1}]


def test_bad_insert_data_is_refused_and_the_store_keeps_working(collector_factory):
    with collector_factory(sql_readonly=False) as running:
        url = running.sql_url
        requests.post(
            url, data="CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n"
        ).raise_for_status()
        bad = requests.post(
            url,
            params={"query": "INSERT INTO t FORMAT JSONEachRow"},
            data='{"n": "not a number"}\n',
        )
        assert bad.status_code in (400, 500) and bad.headers["X-ClickHouse-Exception-Code"] != "0"
        assert bad.text.startswith("Code: ")

        body = lz4.frame.compress(
            b"1\n2\n"
        )  # curl --data-binary of an lz4 file, Content-Encoding set
        good = requests.post(
            url,
            params={"query": "INSERT INTO t FORMAT TSV"},
            data=body,
            headers={"Content-Encoding": "lz4"},
        )
        assert good.status_code == 200, good.text
        assert orjson.loads(good.headers["X-ClickHouse-Summary"])["written_rows"] == "2"
        gz = requests.post(
            url,
            data=gzip.compress(b"INSERT INTO t FORMAT TSV\n3\n"),
            headers={"Content-Encoding": "gzip"},
        )
        assert gz.status_code == 200, gz.text
        assert running.query("SELECT n FROM t ORDER BY n") == [{"n": 1}, {"n": 2}, {"n": 3}]

        export_agent_trace(
            running.grpc_endpoint, "after-bad-insert", "sess-1"
        )  # ingestion still commits
        assert (
            len(
                running.wait_for_rows(
                    "SELECT 1 FROM otel_traces WHERE ServiceName = 'after-bad-insert'", 2
                )
            )
            == 2
        )


# --- another collector using this endpoint as its ClickHouse -------------------------------------


def test_a_collector_migrates_and_inserts_through_another_collectors_endpoint(collector_factory):
    with collector_factory(sql_readonly=False) as upstream:
        # Start from an empty database: the second collector's migrations must create the schema.
        tables = upstream.query(
            "SELECT name FROM system.tables WHERE database = 'default' ORDER BY engine LIKE '%View' DESC"
        )  # views first: they depend on the tables
        for row in tables:
            requests.post(upstream.sql_url, data=f"DROP TABLE {row['name']}").raise_for_status()
        assert upstream.query(
            "SELECT count() AS n FROM system.tables WHERE database = 'default'"
        ) == [{"n": 0}]

        with collector_factory(clickhouse_url=upstream.sql_url) as downstream:
            health = requests.get(f"{downstream.api_url}/healthz").json()
            assert health["status"] == "ok" and health["store"].startswith(
                "ClickHouse at http://127.0.0.1"
            )
            assert upstream.query(
                "SELECT version, name FROM schema_migrations ORDER BY version"
            ) == [{"version": version, "name": name} for version, name, _ in migration_files()]

            export_agent_trace(downstream.grpc_endpoint, "via-downstream", "sess-relay")
            rows = upstream.wait_for_rows(
                "SELECT SpanName, Model, InputTokens, SessionId FROM otel_traces"
                " WHERE ServiceName = 'via-downstream' ORDER BY SpanName",
                2,
            )
            assert rows == [
                {"SpanName": "chat gpt-4o", "Model": "gpt-4o", "InputTokens": 12, "SessionId": ""},
                {
                    "SpanName": "invoke_agent support",
                    "Model": "",
                    "InputTokens": 0,
                    "SessionId": "sess-relay",
                },
            ]
            # the materialized views created through the endpoint ran on the endpoint's inserts
            sessions = upstream.query("SELECT SessionId, AgentName FROM session_traces")
            assert sessions == [{"SessionId": "sess-relay", "AgentName": "support"}]


def test_parameters_with_tabs_and_backslashes_through_clickhouse_connect(collector):
    client = client_for(collector)
    for value in ("a\\b", "tab\there", "two\nlines", "ends with \\"):
        assert client.query("SELECT {v:String}", parameters={"v": value}).result_rows == [(value,)]
    null = client.query("SELECT {v:Nullable(String)} IS NULL", parameters={"v": None})
    assert null.result_rows == [(1,)]
