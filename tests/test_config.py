"""A bad config stops start-up with the file, the key and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentwatch.config import ConfigError, load_config

CONFIGS = Path(__file__).parent / "testdata" / "config"


def test_good_config_and_flag_precedence():
    config = load_config(CONFIGS / "good.yaml", {"otlp_grpc_port": 5317, "listen": None})
    assert config.otlp_grpc_port == 5317  # a flag beats the file
    assert config.listen == "127.0.0.1"  # an absent flag (None) does not
    assert config.batch_flush_interval_s == 0.05
    assert config.prices["acme-llm"].to_price().output_per_mtok == 4.0
    assert config.forward.protocol == "http/protobuf"


def test_defaults_bind_loopback_on_the_standard_ports():
    config = load_config()
    assert (config.listen, config.otlp_grpc_port, config.otlp_http_port, config.sql_port, config.api_port) == (
        "127.0.0.1", 4317, 4318, 8123, 8080,
    )  # fmt: skip
    assert config.sql_readonly is True


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad_port.yaml", "bad_port.yaml: otlp_grpc_port: Input should be a valid integer"),
        ("bad_unknown_key.yaml", "bad_unknown_key.yaml: otlp_grcp_port: unknown setting"),
        (
            "bad_price.yaml",
            "bad_price.yaml: prices.acme-llm.input_per_mtok: Input should be greater than or equal to 0",
        ),
        ("bad_same_ports.yaml", "api_port and otlp_http_port are both 9000"),
        ("bad_yaml.yaml", "bad_yaml.yaml: not valid YAML"),
        ("missing.yaml", "missing.yaml: file not found"),
    ],
)
def test_bad_config_names_file_key_and_expectation(name, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS / name)
    assert expected in str(caught.value)


def test_bad_flag_value_is_named():
    with pytest.raises(
        ConfigError,
        match=r"command line \(--clickhouse-url\): clickhouse_url: expected http\(s\)://",
    ):
        load_config(None, {"clickhouse_url": "tcp://db:9000"})


def test_serve_refuses_to_start_on_a_bad_config(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentwatch.cli.main",
            "serve",
            "--config",
            str(CONFIGS / "bad_port.yaml"),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "bad_port.yaml: otlp_grpc_port: Input should be a valid integer" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_documented_example_config_loads():
    config = load_config(Path(__file__).parents[1] / "deploy" / "agentwatch.example.yaml")
    assert config.prices["my-finetuned-gpt-4o"].cache_read_per_mtok == 1.875


def test_embedded_server_settings_reach_chdb(collector_factory):
    with collector_factory(embedded_server_settings={"background_pool_size": "3"}) as collector:
        rows = collector.query(
            "SELECT value FROM system.server_settings WHERE name = 'background_pool_size'"
        )
        assert rows == [{"value": "3"}]


# --- secrets (issue 11, hole 9) -------------------------------------------------------------------

SLACK = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX"


@pytest.mark.parametrize(
    ("text", "expected", "secret"),
    [
        ("api_token: 12345678\n", "api_token: Input should be a valid string (got '***')", "12345678"),
        ("sql_token: [tok-secret]\n", "sql_token: Input should be a valid string (got '***')", "tok-secret"),
        ("clickhouse_url: tcp://admin:hunter2@db:9000/x\n",
         "clickhouse_url: expected http(s)://[user:password@]host[:port][/database]"
         " (got 'tcp://***@db:9000/…')", "hunter2"),
        ("forward: {endpoint: 'http://x:4318', headers: {Authorization: 98765432}}\n",
         "forward.headers.Authorization: Input should be a valid string (got '***')", "98765432"),
        ("paging: {receivers: [{name: p, type: pagerduty, routing_key: 12345678}], route: {receiver: p}}\n",
         "paging.receivers.0.routing_key: Input should be a valid string (got '***')", "12345678"),
        (f"paging: {{receivers: [{{name: s, type: slack, url: '{SLACK[8:]}'}}], route: {{receiver: s}}}}\n",
         "paging.receivers.0: url: expected http(s)://host[:port][/path], got '***'", "XXXXsecretXXXX"),
        ("paging: {receivers: [{name: w, type: webhook, url: 'ftp://hooks.example/h?token=tok-secret'}],"
         " route: {receiver: w}}\n",
         "paging.receivers.0: url: expected http(s)://host[:port][/path], got 'ftp://hooks.example/…'",
         "tok-secret"),
        ("otlp_grpc_port: 1\napi_token: tok-secret: x\n",
         "not valid YAML at line 2, column 22: mapping values are not allowed here", "tok-secret"),
    ],
)  # fmt: skip
def test_config_errors_name_file_key_and_expectation_but_never_a_secret(
    tmp_path, text, expected, secret
):
    path = tmp_path / "agentwatch.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert f"{path}: " in str(raised.value) and expected in str(raised.value)
    assert secret not in str(raised.value)


def test_a_flag_with_a_password_in_its_url_is_not_echoed():
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"clickhouse_url": "tcp://admin:hunter2@db:9000"})
    assert "(--clickhouse-url): clickhouse_url: expected http(s)://" in str(raised.value)
    assert "hunter2" not in str(raised.value) and "tcp://***@db:9000" in str(raised.value)


def test_secrets_from_the_environment_flag_then_environment_then_file(tmp_path, caplog):
    path = tmp_path / "agentwatch.yaml"
    path.write_text("api_token: file-token\nsql_token: file-sql\n")
    env = {"AGENTWATCH_API_TOKEN": "env-token", "AGENTWATCH_CLICKHOUSE_PASSWORD": "env-pw"}
    config = load_config(path, {"clickhouse_password": "flag-pw"}, env)
    assert (config.api_token, config.sql_token, config.clickhouse_password) == (
        "env-token", "file-sql", "flag-pw",
    )  # fmt: skip
    said = caplog.text  # neither override is silent, and neither names a value
    assert f"api_token: AGENTWATCH_API_TOKEN wins over {path}'s" in said
    assert (
        "clickhouse_password: --clickhouse-password wins over AGENTWATCH_CLICKHOUSE_PASSWORD"
        in said
    )
    assert not any(v in said for v in ("env-token", "env-pw", "flag-pw", "file-token"))
    assert load_config(None, None, {"AGENTWATCH_SQL_TOKEN": "s"}).sql_token == "s"
    assert load_config(None, None, {"AGENTWATCH_SQL_TOKEN": ""}).sql_token is None


def test_serve_warns_that_a_password_flag_shows_in_ps(tmp_path):
    def serve(*args: str, **env: str) -> str:
        """stderr of ``serve``; a bad port stops start-up right after the warning."""
        done = subprocess.run(
            [sys.executable, "-m", "agentwatch.cli.main", "serve", "--otlp-grpc-port", "99999",
             "--data-dir", str(tmp_path), *args],
            capture_output=True, text=True, timeout=60, env={**os.environ, **env},
        )  # fmt: skip
        assert done.returncode != 0 and "otlp_grpc_port" in done.stderr
        return done.stderr

    assert "visible to other users in `ps`" in serve("--clickhouse-password", "pw")
    assert "visible to other users in `ps`" in serve("--clickhouse-url", "http://u:pw@db:8123")
    quiet = serve(AGENTWATCH_CLICKHOUSE_PASSWORD="pw")
    assert "`ps`" not in quiet and "pw" not in quiet.replace("port", "")


def test_incident_links_default_to_the_console_page_under_public_url():
    console = load_config(None, {"public_url": "https://aw.internal:8443/"})
    assert console.link_template(8080) == "https://aw.internal:8443/incidents/{incident_id}"
    assert console.link_template(8080).format(incident_id="inc-1") == (
        "https://aw.internal:8443/incidents/inc-1"
    )
    # without public_url: where the API listens (loopback opens on this machine only)
    assert load_config().link_template(8080) == "http://127.0.0.1:8080/incidents/{incident_id}"
    anywhere = load_config(None, {"listen": "0.0.0.0", "api_token": "t"})
    assert "0.0.0.0" not in anywhere.link_template(8080)  # the machine's name instead
    assert anywhere.link_template(8080).endswith(":8080/incidents/{incident_id}")
    # incident_link_template still wins, and may name the incident
    grafana = load_config(
        None,
        {
            "public_url": "http://aw:8080",
            "incident_link_template": "https://g/d?var-id={incident_id}",
        },
    )
    assert grafana.link_template(8080) == "https://g/d?var-id={incident_id}"


def test_bad_public_url_or_link_template_names_the_key_and_what_is_allowed():
    with pytest.raises(ConfigError) as bad_url:
        load_config(None, {"public_url": "agentwatch.internal:8080"})
    assert "public_url: expected http(s)://host[:port][/path]" in str(bad_url.value)
    with pytest.raises(ConfigError) as bad_field:
        load_config(None, {"incident_link_template": "https://g/{incident}"})
    said = str(bad_field.value)
    assert "incident_link_template: may use only {incident_id}, {trace_id}" in said


def test_every_setting_has_its_variable_flag_then_environment_then_file(tmp_path, caplog):
    path = tmp_path / "agentwatch.yaml"
    path.write_text(
        "otlp_http_port: 5318\nbatch_max_spans: 100\n"
        "paging:\n  receivers: [{name: og, type: opsgenie, api_key: file-key}]\n"
        "  route: {receiver: og}\n  retry_max_s: 60\n"
    )
    env = {
        "AGENTWATCH_OTLP_HTTP_PORT": "6318",  # beats the file
        "AGENTWATCH_OTLP_GRPC_PORT": "6317",  # loses to the flag
        "AGENTWATCH_DETECT_PROCESS": "false",
        "AGENTWATCH_PAGING__RETRY_MAX_S": "600",  # one key deeper, the rest of paging kept
        "AGENTWATCH_PAGING__RECEIVERS__0__API_KEY": "env-key",
        "AGENTWATCH_TENANTS": "{acme: {ingest_token: t-acme}}",  # a mapping, whole
        "AGENTWATCH_API_TOKEN": "admin",
        "AGENTWATCH_NATIVE_READER": "1",  # not a setting: left alone
    }
    config = load_config(path, {"otlp_grpc_port": 7317}, env)
    assert (config.otlp_grpc_port, config.otlp_http_port, config.batch_max_spans) == (
        7317, 6318, 100,
    )  # fmt: skip
    assert config.detect_process is False
    assert config.paging.retry_max_s == 600 and config.paging.route.receiver == "og"
    assert config.paging.receivers[0].api_key == "env-key"
    assert config.tenants["acme"].ingest_token == "t-acme"
    assert f"otlp_http_port: AGENTWATCH_OTLP_HTTP_PORT wins over {path}'s" in caplog.text
    assert "otlp_grpc_port: --otlp-grpc-port wins over AGENTWATCH_OTLP_GRPC_PORT" in caplog.text
    assert "file-key" not in caplog.text and "env-key" not in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AGENTWATCH_OTLP_GRPC_PORT": "grpc"},
            "environment (AGENTWATCH_OTLP_GRPC_PORT): otlp_grpc_port: Input should be a valid"
            " integer",
        ),
        (
            {"AGENTWATCH_BATCH_FLUSH_INTERVAL_S": "600"},
            "environment (AGENTWATCH_BATCH_FLUSH_INTERVAL_S): batch_flush_interval_s: Input"
            " should be less than or equal to 60",
        ),
        (
            {"AGENTWATCH_FORWARD__ENDPOINT": "http://x:4318", "AGENTWATCH_FORWARD__QUEU": "1"},
            "environment (AGENTWATCH_FORWARD__QUEU): forward.queu: unknown setting",
        ),
        (
            {"AGENTWATCH_TENANTS": "acme"},
            "environment (AGENTWATCH_TENANTS): tenants: Input should be a valid dictionary",
        ),
        (
            {"AGENTWATCH_TENANTS": "{acme: [unclosed"},
            "AGENTWATCH_TENANTS: not valid YAML/JSON",
        ),
        (
            {
                "AGENTWATCH_PAGING": "{receivers: [], route: {}}",
                "AGENTWATCH_PAGING__RECEIVERS__3__API_KEY": "k",
            },
            "AGENTWATCH_PAGING__RECEIVERS__3__API_KEY: paging.receivers has 0 items",
        ),
    ],
)
def test_a_bad_variable_stops_start_up_naming_it_and_what_was_expected(env, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(None, None, env)
    assert expected in str(raised.value)


def test_a_secret_from_a_file_named_by_its_file_variable(tmp_path):
    """Docker secrets: the token in /run/secrets/..., its path in AGENTWATCH_API_TOKEN_FILE."""
    secret = tmp_path / "api_token"
    secret.write_text("s3cret-token\n")
    config = load_config(None, None, {"AGENTWATCH_API_TOKEN_FILE": str(secret)})
    assert config.api_token == "s3cret-token"  # without the file's newline
    with pytest.raises(ConfigError, match="AGENTWATCH_API_TOKEN is set too"):
        load_config(None, None, {"AGENTWATCH_API_TOKEN_FILE": str(secret),
                                 "AGENTWATCH_API_TOKEN": "t"})  # fmt: skip
    with pytest.raises(ConfigError, match="AGENTWATCH_SQL_TOKEN_FILE: cannot read .*missing"):
        load_config(None, None, {"AGENTWATCH_SQL_TOKEN_FILE": str(tmp_path / "missing")})
    # policy_file is a setting whose name ends in _file: its variable is a path, not a secret
    with pytest.raises(ConfigError, match="policy file: "):
        load_config(None, None, {"AGENTWATCH_POLICY_FILE": str(tmp_path / "no-policy.yaml")})
    # a secret's value never appears in an error, from a file or not
    with pytest.raises(ConfigError) as raised:
        load_config(None, None, {"AGENTWATCH_API_TOKEN_FILE": str(secret),
                                 "AGENTWATCH_TENANTS": "{acme: {read_token: s3cret-token}}"})  # fmt: skip
    assert "s3cret-token" not in str(raised.value) and "tenants.acme" in str(raised.value)


def test_serve_takes_its_settings_from_the_environment(tmp_path):
    """The container's way: no flag, no file; a bad variable stops `serve` naming it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWATCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "agentwatch.cli.main", "serve"],
        capture_output=True, text=True, timeout=60,
        env={**clean, "AGENTWATCH_DATA_DIR": str(tmp_path), "AGENTWATCH_LISTEN": "0.0.0.0",
             "AGENTWATCH_OTLP_GRPC_PORT": "99999"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "environment (AGENTWATCH_OTLP_GRPC_PORT): otlp_grpc_port:" in done.stderr
    # beyond loopback without a token: refused (the listen came from the environment too)
    done = subprocess.run(
        [sys.executable, "-m", "agentwatch.cli.main", "serve"],
        capture_output=True, text=True, timeout=60,
        env={**clean, "AGENTWATCH_DATA_DIR": str(tmp_path), "AGENTWATCH_LISTEN": "0.0.0.0"},
    )  # fmt: skip
    assert done.returncode != 0 and "AGENTWATCH_API_TOKEN" in done.stderr
