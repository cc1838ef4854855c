"""The read-only gate attacked: every way through ClickHouse's settings, formats and functions to
the host's files or the network that was found on the SQL port, and the resource limits.

The store is a real chDB; the "secret" is a file of ours whose text must never come back, and
the "network" a loopback HTTP server that must never be called.
"""

from __future__ import annotations

import orjson
import pytest

from agentwatch.sql.gate import ReadOnlyViolation, SqlLimits, run_read_only
from collector.store import StoreError
from collector.store.embedded import EmbeddedStore

SECRET = "s3cret-line-of-the-host"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = EmbeddedStore(tmp_path_factory.mktemp("gate"))
    s.command("CREATE TABLE t (x UInt64) ENGINE = MergeTree ORDER BY x")
    s.command("INSERT INTO t SELECT number FROM numbers(1000)")
    yield s
    s.close()


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("host") / "secret"
    path.write_text(SECRET + "\n")
    return path


def attempt(store, query, fmt="TabSeparated", settings=None, limits=None) -> str:
    """What a client sees: the output, or the error's text (the leak would be in either)."""
    try:
        return run_read_only(store, query, fmt, None, settings or {}, limits).__repr__()
    except (ReadOnlyViolation, StoreError) as exc:
        return f"refused: {exc}"


def file_attacks(path: str, url: str) -> list[tuple[str, str, dict]]:
    """(query, format, URL settings): each read the file, called the URL or wrote a file."""
    subquery = f"(SELECT toUInt8(line) FROM file('{path}', 'LineAsString') LIMIT 1)"
    return [
        ("SELECT 1 AS x", "TabSeparated", {"additional_result_filter": f"x = {subquery}"}),
        ("SELECT 1 AS x", "TabSeparated", {"additional_result_filter": f"x IN (SELECT * FROM url('{url}/f', CSV))"}),
        ("SELECT 1 AS x", "Template", {"format_template_resultset": path}),
        ("SELECT 1 AS x", "TabSeparated", {"format_template_resultset": path}),
        ("SELECT 1 AS x", "Protobuf", {"output_format_schema": f"{path}.written"}),
        ("SELECT 1 AS x", "TabSeparated", {"additional_table_filters": "{'t': 'x = 0'}"}),
        (f"SELECT 1 AS x SETTINGS additional_result_filter = 'x = {subquery}'", "TabSeparated", {}),
        (f"SELECT * FROM (SELECT 1 AS x SETTINGS additional_result_filter = 'x = {subquery}')", "TabSeparated", {}),
        ("SELECT 1 AS x SETTINGS readonly = 0", "TabSeparated", {}),
        ("SELECT 1 AS x FORMAT Template SETTINGS format_template_resultset = '" + path + "'", "TabSeparated", {}),
        ("SELECT 1 AS x FORMAT Template", "TabSeparated", {}),
        (f"SELECT file('{path}')", "TabSeparated", {}),
        # EXPLAIN took the FORMAT clause too (Native: no text for the checks to read)
        (f"SELECT file('{path}') FORMAT Native", "TabSeparated", {}),
        (f"SELECT * FROM (SELECT 1 AS x SETTINGS additional_result_filter = 'x = {subquery}') FORMAT RowBinary", "TabSeparated", {}),
        (f"SELECT * FROM file('{path}', 'LineAsString')", "TabSeparated", {}),
        (f"SELECT * FROM url('{url}/t', 'LineAsString')", "TabSeparated", {}),
        (f"SELECT 1 WHERE 1 IN (SELECT * FROM url('{url}/w', CSV))", "TabSeparated", {}),
        (f"DESCRIBE TABLE file('{path}', 'LineAsString')", "TabSeparated", {}),
        (f"EXPLAIN SELECT * FROM s3('{url}/b/k.csv')", "TabSeparated", {}),
        ("SELECT * FROM remote('127.0.0.1:9000', system.one)", "TabSeparated", {}),
        ("SELECT * FROM python(secrets)", "TabSeparated", {}),
        ("SELECT * FROM executable('cat /etc/hostname', TSV, 'x String')", "TabSeparated", {}),
        (f"SELECT * FROM format(Template, 'x String', '') SETTINGS format_template_row = '{path}'", "TabSeparated", {}),
        (f"SELECT 1 INTO OUTFILE '{path}.outfile'", "TabSeparated", {}),
        ("INSERT INTO t VALUES (1)", "TabSeparated", {}),
        ("CREATE TABLE evil (x UInt8) ENGINE = Memory", "TabSeparated", {}),
        ("CREATE TEMPORARY TABLE t (y UInt8)", "TabSeparated", {}),
        ("SET readonly = 0", "TabSeparated", {}),
        ("SELECT 1; DROP TABLE t", "TabSeparated", {}),
    ]  # fmt: skip


def test_no_setting_format_or_function_reaches_a_file_or_the_network(store, secret_file, listener):
    url, hits = listener
    for query, fmt, settings in file_attacks(str(secret_file), url):
        seen = attempt(store, query, fmt, settings)
        assert seen.startswith("refused: "), (query, settings, seen)
        assert SECRET not in seen, (query, settings, seen)
    assert hits == []  # the collector fetched nothing
    assert not (secret_file.parent / "secret.written").exists()
    assert not (secret_file.parent / "secret.outfile").exists()
    assert secret_file.read_text() == SECRET + "\n"  # nothing overwrote it
    # and the store is as it was
    assert run_read_only(store, "SELECT count() FROM t", "TSV")[0] == b"1000\n"
    assert run_read_only(store, "EXISTS TABLE evil", "TSV")[0] == b"0\n"


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM numbers(3)",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "SELECT name FROM system.tables",
        "SHOW TABLES",
        "SELECT {n:UInt8} + 1",
        "-- a comment first\nSELECT 'file(' AS text",
        "SELECT 'SETTINGS readonly = 0' AS text",
        "EXPLAIN SELECT count() FROM t",
        "SELECT 1 EXCEPT SELECT 2",  # formatted as (SELECT 1) EXCEPT …
        "SELECT count() FROM t WHERE x IN (SELECT x FROM t WHERE x < 10)",
    ],
)
def test_reading_statements_run(store, query):
    output, _, _ = run_read_only(store, query, "TSV", {"n": "4"})
    assert output


def test_allowed_settings_apply_and_limits_can_only_be_lowered(store):
    query = "SELECT toUInt64(7) AS n"
    quoted = run_read_only(
        store, query, "JSONEachRow", None, {"output_format_json_quote_64bit_integers": "1"}
    )
    assert quoted[0] == b'{"n":"7"}\n'
    # clickhouse-connect sends input settings on every request: accepted, not applied
    assert run_read_only(store, query, "TSV", None, {"date_time_input_format": "best_effort"})[0]
    limit = "SELECT getSetting('max_execution_time'), getSetting('max_result_bytes')"
    limits = SqlLimits(max_execution_time_s=30, max_result_mib=2)
    lowered = run_read_only(store, limit, "TSV", None, {"max_execution_time": "5"}, limits)
    assert lowered[0] == f"5\t{2 << 20}\n".encode()
    for raised in ("0", "3600", "not a number"):
        kept = run_read_only(store, limit, "TSV", None, {"max_execution_time": raised}, limits)
        assert kept[0] == f"30\t{2 << 20}\n".encode()


def test_a_result_over_the_limit_fails_instead_of_filling_memory(store):
    with pytest.raises(StoreError, match="TOO_MANY_ROWS_OR_BYTES|Limit for result exceeded"):
        run_read_only(
            store, "SELECT number FROM numbers(10000000)", "TSV", limits=SqlLimits(max_result_mib=1)
        )


def test_a_long_query_stops_at_the_time_limit(store):
    with pytest.raises(StoreError, match="TIMEOUT_EXCEEDED|Timeout exceeded"):
        run_read_only(
            store,
            "SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 1",
            "TSV",
            limits=SqlLimits(max_execution_time_s=1),
        )


def test_a_failed_query_leaves_nothing_for_the_next(store):
    """chDB put a failed query's partial output in front of the next query's on one connection;
    each statement has a session of its own now."""
    failing = "SELECT number, throwIf(number = 200000) FROM numbers(1000000)"
    with pytest.raises(StoreError):
        run_read_only(store, failing, "TSV", settings={"max_block_size": "1000"})
    assert run_read_only(store, "SELECT 'next'", "TSV")[0] == b"next\n"
    assert store.query("SELECT 'store'", "TSV") == b"store\n"


def test_parameter_values_arrive_as_sent(store):
    for value in ("a\\b", "tab\there", "two\nlines", "quote ' and \\N", "ünïcode"):
        output, _, _ = run_read_only(store, "SELECT {v:String}", "JSONEachRow", {"v": value})
        assert list(orjson.loads(output).values()) == [value]


def test_a_null_parameter_is_null(store):
    output, _, _ = run_read_only(store, "SELECT {v:Nullable(String)} IS NULL", "TSV", {"v": None})
    assert output == b"1\n"
