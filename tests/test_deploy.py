"""deploy/: the Dockerfile, the compose file and the gateway config, checked without Docker.

No Docker engine and no OpenTelemetry Collector binary run here, so these files are read, not
run: their structure, and the settings the containers would start with, passed through the same
``load_config`` that ``agentwatch serve`` runs.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from agentwatch.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
GATEWAY = yaml.safe_load((DEPLOY / "otelcol-gateway.yaml").read_text())
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
AGENTWATCH_SERVICES = ("agentwatch", "agentwatch-1", "agentwatch-2")


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (an unset one fails).

    >>> interpolate("${A:-x}/${B}", {"B": "b"})
    'x/b'
    """

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if environ.get(name):
            return environ[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def image_env() -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's last stage (``ENV A=1 B=2``)."""
    runtime = DOCKERFILE.split("\nFROM ")[-1]
    pairs = re.findall(r"^ENV (.+)$", runtime, re.M)
    return dict(item.split("=", 1) for line in pairs for item in line.split())


def container_env(service: str, environ: dict[str, str]) -> dict[str, str]:
    """What ``agentwatch serve`` sees in the container of ``service``."""
    declared = COMPOSE["services"][service].get("environment", {})
    return {**image_env(), **{k: interpolate(str(v), environ) for k, v in declared.items()}}


def profiles(service: str) -> set[str]:
    return set(COMPOSE["services"][service].get("profiles", []))


def published(profile: str) -> dict[int, str]:
    """Host port -> service, for every service ``--profile profile`` starts; a port taken twice
    would stop ``docker compose up``."""
    ports: dict[int, str] = {}
    for name, service in COMPOSE["services"].items():
        if service.get("profiles") and profile not in service["profiles"]:
            continue
        for mapping in service.get("ports", []):
            host = int(str(mapping).split(":")[0])
            assert host not in ports, f"{profile}: {name} and {ports[host]} both publish {host}"
            ports[host] = name
    return ports


def test_the_image_builds_the_c_reader_and_runs_it():
    build, runtime = DOCKERFILE.split("\nFROM ")[1:]
    assert build.startswith("python:3.11-slim AS build") and "gcc" in build
    assert "setup.py build_ext" in build
    # optional=True in setup.py: a failed compile would not fail the install; this check does,
    # in the build stage and again in the slim stage (no compiler, same paths)
    check = "from collector.normalize import READER; assert READER == 'native'"
    assert check in build and check in runtime
    assert runtime.startswith("python:3.11-slim\n") and "USER agentwatch" in runtime
    # settings as variables, not flags: a flag in the entrypoint would win over the environment
    assert 'ENTRYPOINT ["agentwatch", "serve"]' in runtime


def test_the_build_context_leaves_out_what_is_large_and_keeps_what_is_copied():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
            or path.startswith(p.rstrip("/") + "/")
            for p in patterns
        )  # fmt: skip

    for large in (".venv/bin/python", ".git/HEAD", "build/lib/x.so", "agentwatch-data/store"):
        assert ignored(large), large
    assert ignored("collector/_otlp_reader.cpython-311-x86_64-linux-gnu.so")  # built here: rebuilt
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M)
    for path in (p for line in copied for p in line.split()):
        assert not ignored(path), path
    assert not ignored("collector/_otlp_reader.c") and not ignored("setup.py")


def test_every_compose_service_of_agentwatch_starts_with_valid_settings():
    """Each container's settings (image ENV, then compose environment) through load_config."""
    environ = {"AGENTWATCH_API_TOKEN": "t0ken-from-the-shell"}
    for service in AGENTWATCH_SERVICES:
        config = load_config(None, None, container_env(service, environ))
        assert config.listen == "0.0.0.0" and config.api_token == "t0ken-from-the-shell"
        assert config.clickhouse_url == "http://agentwatch@clickhouse:8123/agentwatch"
        assert config.clickhouse_password == "agentwatch"  # the ClickHouse service's default
        assert COMPOSE["services"][service]["depends_on"]["clickhouse"] == {
            "condition": "service_healthy"
        }
    with pytest.raises(KeyError, match="AGENTWATCH_API_TOKEN"):  # compose refuses to start
        container_env("agentwatch-1", {})


def test_the_scale_profile_is_a_gateway_in_front_of_two_collectors_and_clickhouse():
    scale = {name for name in COMPOSE["services"] if "scale" in profiles(name)}
    assert scale == {"otelcol-gateway", "agentwatch-1", "agentwatch-2"}
    assert profiles("clickhouse") == set()  # started by every profile
    gateway = COMPOSE["services"]["otelcol-gateway"]
    assert gateway["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert "./otelcol-gateway.yaml:/etc/otelcol/gateway.yaml:ro" in gateway["volumes"]
    assert "--config=/etc/otelcol/gateway.yaml" in gateway["command"]


def test_the_gateway_routes_by_trace_id_to_the_collectors_of_the_compose_file():
    exporters = GATEWAY["exporters"]
    assert list(exporters) == ["loadbalancing"]  # no exporter to a backend that does not exist
    lb = exporters["loadbalancing"]
    assert lb["routing_key"] == "traceID" and "endpoint" not in lb["protocol"]["otlp"]
    hosts = lb["resolver"]["static"]["hostnames"]
    grpc_port = Config.model_fields["otlp_grpc_port"].default
    assert hosts == [f"agentwatch-1:{grpc_port}", f"agentwatch-2:{grpc_port}"]
    assert all(host.split(":")[0] in COMPOSE["services"] for host in hosts)
    pipeline = GATEWAY["service"]["pipelines"]["traces"]
    assert pipeline["exporters"] == ["loadbalancing"]
    assert set(pipeline["receivers"]) <= set(GATEWAY["receivers"])
    assert set(pipeline["processors"]) <= set(GATEWAY["processors"])


@pytest.mark.parametrize(
    ("profile", "otlp_service"), [("single", "agentwatch"), ("scale", "otelcol-gateway")]
)
def test_the_readme_exporter_endpoints_reach_agentwatch_in_either_profile(profile, otlp_service):
    readme = (ROOT / "README.md").read_text()
    ports = {
        int(port)
        for port in re.findall(r"OTEL_EXPORTER_OTLP\w*ENDPOINT=http://127\.0\.0\.1:(\d+)", readme)
    }
    assert ports == {4317, 4318}
    host_ports = published(profile)
    assert all(host_ports[port] == otlp_service for port in ports)
    if otlp_service == "otelcol-gateway":  # the gateway listens where it is published
        listens = GATEWAY["receivers"]["otlp"]["protocols"]
        assert {int(p["endpoint"].rsplit(":", 1)[1]) for p in listens.values()} == ports
