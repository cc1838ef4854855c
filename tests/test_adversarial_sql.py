"""The SQL port (:8123) and POST /v1/sql attacked as the hardening issue did, over real HTTP.

Each case was reproduced on the collector before the fix: a file's first line inside an error
message, the collector fetching a URL, a file echoed by a format, a file overwritten, a gzip
body that took RSS to gigabytes, one client's rows in another's answer, a query the client gave
up on running to the end, an open /v1/sql next to a configured sql_token.
"""

from __future__ import annotations

import gzip
import threading
import time

import pytest
import requests

from agentwatch.config import ConfigError, load_config

SECRET = "s3cret-line-of-the-host"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    return path


def quoted(text: str) -> str:
    return text.replace("'", "''")


def test_settings_and_formats_reach_no_file_and_no_url(collector, secret_file, listener):
    url, hits = listener
    path = str(secret_file)
    reads_file = f"x = (SELECT toUInt8(line) FROM file('{path}', 'LineAsString') LIMIT 1)"
    calls_url = f"x IN (SELECT * FROM url('{url}/ssrf', CSV))"
    attacks = [
        {"query": "SELECT 1 AS x", "additional_result_filter": reads_file},
        {"query": "SELECT 1 AS x", "additional_result_filter": calls_url},
        {"query": "SELECT 1", "default_format": "Template", "format_template_resultset": path},
        {"query": "SELECT 1", "default_format": "Protobuf", "output_format_schema": path},
        {"query": f"SELECT 1 AS x SETTINGS additional_result_filter = '{quoted(calls_url)}'"},
    ]
    for params in attacks:
        response = requests.get(collector.sql_url, params=params)
        assert response.status_code != 200, (params, response.text)
        assert SECRET not in response.text, params
        assert response.headers["X-ClickHouse-Exception-Code"] == "164"  # READONLY
    api = requests.post(
        f"{collector.api_url}/v1/sql",
        json={"query": f"SELECT 1 AS x SETTINGS additional_result_filter = '{quoted(reads_file)}'"},
    )
    assert api.status_code == 403 and SECRET not in api.text
    assert hits == []
    assert secret_file.read_text() == SECRET + "\n"  # Protobuf's schema path did not overwrite it


def test_a_compressed_bomb_stops_at_the_body_limit(collector):
    query = b"SELECT 1 " + b" " * (64 << 20)  # 64 MiB of query, ~64 KiB gzipped
    body = gzip.compress(query, compresslevel=9)
    assert len(body) < 1 << 20
    response = requests.post(
        collector.sql_url, data=body, headers={"Content-Encoding": "gzip"}, timeout=60
    )
    assert response.status_code == 413, response.text
    assert "sql_max_query_kib" in response.text
    assert requests.post(collector.sql_url, data="SELECT 2").text == "2\n"


LONG_QUERY = "SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 1"


def _running_sql(collector) -> list[dict]:
    return collector.query(
        "SELECT query FROM system.processes WHERE Settings['log_comment'] LIKE 'agentwatch-sql:%'"
    )


def test_queries_run_side_by_side_and_health_does_not_wait_for_them(collector):
    long = threading.Thread(
        target=requests.post, args=(collector.sql_url,), kwargs={"data": LONG_QUERY}
    )
    long.start()
    deadline = time.monotonic() + 10
    while not _running_sql(collector) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_sql(collector), "the long query never started"
    assert requests.post(collector.sql_url, data="SELECT 'beside'").text == "beside\n"
    assert requests.get(f"{collector.api_url}/healthz").json()["status"] == "ok"
    assert long.is_alive()  # both answered while the long query still ran
    collector.call(collector.collector.run_store(collector.collector.store.query,
                   "KILL QUERY WHERE Settings['log_comment'] LIKE 'agentwatch-sql:%' SYNC", "TSV"))  # fmt: skip
    long.join(30)


@pytest.mark.parametrize("port", ["sql", "api"])
def test_a_query_whose_client_went_away_is_cancelled(collector, port):
    with pytest.raises(requests.exceptions.ReadTimeout):
        if port == "sql":
            requests.post(collector.sql_url, data=LONG_QUERY, timeout=1.5)
        else:
            requests.post(f"{collector.api_url}/v1/sql", json={"query": LONG_QUERY}, timeout=1.5)
    deadline = time.monotonic() + 15  # sql_max_execution_time_s is 60: only a cancel ends it here
    while _running_sql(collector) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running_sql(collector) == []


def test_a_failed_query_leaks_nothing_into_the_next_clients_answer(collector):
    failing = "SELECT number, throwIf(number = 300000) FROM numbers(1000000)"
    response = requests.post(collector.sql_url, params={"max_block_size": "1000"}, data=failing)
    assert response.status_code != 200
    assert requests.post(collector.sql_url, data="SELECT 'mine'").text == "mine\n"
    assert requests.get(f"{collector.api_url}/healthz").json()["status"] == "ok"


def test_sql_token_guards_v1_sql_and_the_admin_token_opens_the_sql_port(collector_factory):
    with collector_factory(sql_token="reader", api_token="admin") as running:
        sql = f"{running.api_url}/v1/sql"
        assert requests.post(sql, json={"query": "SELECT 1"}).status_code == 401
        for token in ("reader", "admin"):
            ok = requests.post(
                sql, json={"query": "SELECT 1"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert ok.status_code == 200, ok.text
        # the reader's token opens SQL only
        incidents = requests.get(
            f"{running.api_url}/v1/incidents", headers={"Authorization": "Bearer reader"}
        )
        assert incidents.status_code == 403  # a known token, not one that opens this
        assert requests.post(running.sql_url, data="SELECT 7", auth=("a", "admin")).text == "7\n"
    with collector_factory(sql_token="reader") as running:  # no api_token: /v1/sql still guarded
        assert (
            requests.post(f"{running.api_url}/v1/sql", json={"query": "SELECT 1"}).status_code
            == 401
        )


def test_listening_beyond_loopback_without_a_token_stops_start_up():
    with pytest.raises(ConfigError, match="api_token") as refused:
        load_config(None, {"listen": "0.0.0.0"})
    assert "allow_unauthenticated" in str(refused.value)
    assert load_config(None, {"listen": "0.0.0.0", "api_token": "t"}).api_token == "t"
    assert load_config(None, {"listen": "0.0.0.0", "allow_unauthenticated": True})
    assert load_config(None, {"listen": "127.0.0.2"}).loopback_only
