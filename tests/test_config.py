"""A bad config stops start-up with the file, the key and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import ConfigError, load_config

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
            "collector.cli",
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
