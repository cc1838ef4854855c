"""The read-only gate in front of the embedded store: reading statements only, nothing outside."""

from __future__ import annotations

import pytest

from collector.sql_gate import ReadOnlyViolation, read_only_query
from collector.store.embedded import EmbeddedStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = EmbeddedStore(tmp_path_factory.mktemp("gate"))
    yield s
    s.close()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT count() FROM file('/etc/passwd', 'LineAsString')",
        "SELECT file('/etc/passwd')",
        "SELECT 1 WHERE 1 IN (SELECT * FROM url('http://127.0.0.1:9/x', CSV))",
        "SELECT * FROM python(secrets)",
        "DESCRIBE TABLE file('/etc/passwd', 'LineAsString')",
        "EXPLAIN SELECT * FROM s3('http://127.0.0.1:9/b/k.csv')",
        "SELECT * FROM remote('127.0.0.1:9000', system.one)",
        "SELECT 1 INTO OUTFILE '/tmp/out.csv'",
        "INSERT INTO t VALUES (1)",
        "CREATE TABLE t (x UInt8) ENGINE = Memory",
        "SET readonly = 0",
        "SELECT 1; DROP TABLE otel_traces",
    ],
)
def test_refused(store, query):
    with pytest.raises(ReadOnlyViolation):
        read_only_query(store, query)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM numbers(3)",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "SELECT name FROM system.tables",
        "SHOW TABLES",
        "SELECT {n:UInt8} + 1",
        "-- a comment first\nSELECT 'file(' AS text",
    ],
)
def test_allowed_and_run_read_only(store, query):
    statement = read_only_query(store, query, {"n": "4"})
    assert statement
    if statement.startswith(("SELECT", "WITH")):
        assert statement.endswith("SETTINGS readonly = 2")


def test_readonly_cannot_be_switched_off_inside_the_query(store):
    statement = read_only_query(store, "SELECT 1 SETTINGS readonly = 0")
    with pytest.raises(Exception, match="readonly"):
        store.query(statement, "TSV")
