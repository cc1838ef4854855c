"""The collector's one typed configuration: defaults, a YAML file, the environment, then flags.

Precedence is explicit and simple: built-in defaults < config file < environment < flags. Every
setting has its variable (``env_variable``: ``AGENTWATCH_`` and the key in capitals; ``__`` goes
one key deeper); a secret is best given there or in a file named by ``AGENTWATCH_<KEY>_FILE`` (a
flag is visible to every user in ``ps``). An environment value that overrides one of the file, or
is overridden by a flag, is logged, never silent. A bad value stops start-up with ``ConfigError``
naming the file or variable, the key and what was expected; a secret's value is never shown in it
(``_shown``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agentwatch.sql.gate import SqlLimits
from analyzer.policy import PolicyError, load_policy
from analyzer.user_regex import RegexError, compile_regex
from collector.forwarder import ForwardConfig
from collector.pricing import Price
from collector.store.cluster_ddl import check_cluster_name

log = logging.getLogger("agentwatch.config")

_TENANT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

ENV_PREFIX = "AGENTWATCH_"
#: ``AGENTWATCH_`` variables that are not settings of ``serve``: the CLI client's and the C
#: reader's switch (``collector.normalize``).
OTHER_VARIABLES = frozenset({"AGENTWATCH_TOKEN", "AGENTWATCH_API_URL", "AGENTWATCH_NATIVE_READER"})


def env_variable(*path: str) -> str:
    """The variable of a setting: ``AGENTWATCH_`` and its key path in capitals, ``__`` between.

    >>> env_variable("api_token"), env_variable("paging", "retry_max_s")
    ('AGENTWATCH_API_TOKEN', 'AGENTWATCH_PAGING__RETRY_MAX_S')
    """
    return ENV_PREFIX + "__".join(path).upper()


#: What an incident link template may use (``analyzer.incidents.lifecycle.Incident.record``).
LINK_FIELDS = ("incident_id", "trace_id", "span_id", "session_id")


class ConfigError(ValueError):
    """Start-up cannot continue: which file, which key, what was expected."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantConfig(_Section):
    """A tenant's tokens: the token decides the tenant (``collector.auth``)."""

    ingest_token: str | None = Field(
        default=None,
        description="OTLP exporters send it (Authorization: Bearer); spans are"
        " stored as this tenant whatever tenant.id they carry",
    )
    read_token: str | None = Field(
        default=None, description="reads this tenant's rows only: incidents, /v1/sql, SQL port"
    )


class PriceConfig(_Section):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cache_read_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)

    def to_price(self) -> Price:
        return Price(
            self.input_per_mtok,
            self.output_per_mtok,
            self.cache_read_per_mtok,
            self.cache_write_per_mtok,
        )


RECEIVER_TYPES = ("pagerduty", "opsgenie", "slack", "alertmanager", "webhook")
ROUTE_LABELS = ("severity", "class", "detector", "kind", "agent", "service", "tenant", "drill")


class ReceiverConfig(_Section):
    """A pager to send to (README "Paging"); the keys a type needs are checked at start-up."""

    name: str = Field(min_length=1)
    type: Literal["pagerduty", "opsgenie", "slack", "alertmanager", "webhook"]
    url: str | None = Field(default=None, description="default: the vendor's public endpoint")
    routing_key: str | None = Field(default=None, description="pagerduty: integration key")
    api_key: str | None = Field(default=None, description="opsgenie: API integration key")
    secret: str | None = Field(default=None, description="webhook: HMAC-SHA256 signing secret")
    webhook_secret: str | None = Field(
        default=None,
        description="pagerduty, opsgenie: the secret their webhooks to us carry (README 'Paging')",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="webhook: extra headers")
    runbook_url: str = ""
    priorities: dict[Literal["SEV1", "SEV2", "SEV3"], Literal["P1", "P2", "P3", "P4", "P5"]] = (
        Field(default_factory=dict, description="opsgenie: SEV -> priority (default SEVn -> Pn)")
    )
    resend_interval_s: float = Field(
        default=60.0, gt=0, description="alertmanager: re-send a firing incident this often"
    )
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _needs(self) -> ReceiverConfig:
        needed = {
            "pagerduty": ("routing_key",),
            "opsgenie": ("api_key",),
            "slack": ("url",),
            "alertmanager": ("url",),
            "webhook": ("url",),
        }[self.type]
        missing = [key for key in needed if not getattr(self, key)]
        if missing:
            raise ValueError(f"a {self.type} receiver needs {' and '.join(missing)}")
        if self.url is not None:
            parsed = urlparse(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"url: expected http(s)://host[:port][/path], got {self.url!r}")
        return self


class RouteConfig(_Section):
    """Alertmanager-like: matchers, a receiver, children; unset settings come from the parent."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = Field(default=None, description="default: the receiver's name")
    receiver: str | None = None
    match: dict[str, str | list[str]] = Field(default_factory=dict)
    match_re: dict[str, str] = Field(default_factory=dict)
    continue_: bool = Field(default=False, alias="continue")
    group_wait_s: float | None = Field(default=None, ge=0)
    repeat_interval_s: float | None = Field(default=None, gt=0)
    routes: list[RouteConfig] = Field(default_factory=list)

    @field_validator("match", mode="before")
    @classmethod
    def _yaml_bools(cls, value):
        """``drill: true`` in YAML is a bool: matched as the label's text ``true``."""
        if isinstance(value, dict):
            return {k: str(v).lower() if isinstance(v, bool) else v for k, v in value.items()}
        return value

    @field_validator("match", "match_re")
    @classmethod
    def _labels(cls, value: dict) -> dict:
        for key in value:
            if key not in ROUTE_LABELS:
                raise ValueError(f"cannot match on {key!r}; labels are {', '.join(ROUTE_LABELS)}")
        return value

    @field_validator("match_re")
    @classmethod
    def _regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for key, pattern in value.items():
            try:
                compile_regex(pattern)
            except RegexError as exc:
                raise ValueError(f"{key}: {pattern!r}: {exc}") from None
        return value


class PagingConfig(_Section):
    """Receivers, the route tree, and the outbox's retry policy (README "Paging")."""

    receivers: list[ReceiverConfig] = Field(min_length=1)
    route: RouteConfig
    retry_initial_s: float = Field(default=1.0, gt=0, description="first retry delay")
    retry_max_s: float = Field(default=300.0, gt=0, description="longest retry delay")
    give_up_after_s: float = Field(
        default=86400.0,
        gt=0,
        le=7 * 86400,
        description="then 'failed' (at most 7 days: the outbox keeps rows for 30)",
    )
    lease_ttl_s: float = Field(
        default=15.0,
        ge=3.0,
        le=300.0,
        description="several collectors on one store: one of them pages, holding the 'paging'"
        " lease; another takes over this long after it stops renewing",
    )

    @model_validator(mode="after")
    def _routes_name_receivers(self) -> PagingConfig:
        names = [r.name for r in self.receivers]
        duplicate = {n for n in names if names.count(n) > 1}
        if duplicate:
            raise ValueError(f"receivers: names must be unique; repeated: {sorted(duplicate)}")
        if not self.route.receiver:
            raise ValueError("route.receiver: the root route needs a receiver")
        seen: dict[str, str] = {}

        def check(route: RouteConfig, path: str, inherited: str) -> None:
            receiver = route.receiver or inherited
            if route.receiver is not None and route.receiver not in names:
                raise ValueError(
                    f"{path}.receiver: {route.receiver!r} is not a defined receiver"
                    f" (defined: {', '.join(names)})"
                )
            name = route.name or (receiver if inherited else "default")
            if name in seen:
                raise ValueError(
                    f"{path}: route name {name!r} is also {seen[name]}'s (names default to"
                    " 'default' for the root and the receiver's for the others); give one of them"
                    " a distinct `name`"
                )
            seen[name] = path
            for n, child in enumerate(route.routes):
                check(child, f"{path}.routes.{n}", receiver)

        check(self.route, "route", "")
        return self


class DetectionConfig(_Section):
    """Detection beyond the streaming detectors (``detection.*``)."""

    session_sweep_s: float = Field(
        default=30.0,
        ge=0,
        description="every this many seconds, sessions spanning traces are judged whole from the"
        " store (analyzer/session_sweep.py); 0 turns the sweep off",
    )


class Config(_Section):
    listen: str = Field(default="127.0.0.1", description="address every listener binds to")
    data_dir: Path = Field(
        default=Path("./agentwatch-data"), description="embedded store directory"
    )
    otlp_grpc_port: int = Field(default=4317, ge=0, le=65535, description="0 picks a free port")
    otlp_http_port: int = Field(default=4318, ge=0, le=65535)
    sql_port: int = Field(default=8123, ge=0, le=65535)
    api_port: int = Field(default=8080, ge=0, le=65535)

    embedded_server_settings: dict[str, str] = Field(
        default_factory=dict,
        description="ClickHouse server settings for chDB, e.g. background_pool_size",
    )
    embedded_malloc_conf: str = Field(
        default="dirty_decay_ms:250,muzzy_decay_ms:0",
        description="jemalloc options for chDB (JE_MALLOC_CONF); empty keeps chDB's own",
    )
    embedded_release_startup_pages: bool = Field(
        default=True,
        description="after start-up, hand back the chDB library pages only start-up used"
        " (madvise MADV_PAGEOUT; ~150 MB of RSS)",
    )
    clickhouse_url: str | None = Field(
        default=None, description="use a ClickHouse server instead of chDB"
    )
    clickhouse_user: str | None = None
    clickhouse_password: str | None = None
    clickhouse_database: str | None = None
    clickhouse_cluster: str | None = Field(
        default=None,
        description="self-managed ClickHouse cluster: its name in remote_servers (or a {macro});"
        " migrations then create replicated tables and Distributed tables over them, ON CLUSTER"
        " (README 'ClickHouse cluster'). Not for ClickHouse Cloud, which replicates already",
    )
    clickhouse_connect_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="ClickHouse server: TCP/TLS connect timeout"
    )
    clickhouse_query_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="ClickHouse server: longest wait for a statement's answer (an insert whose"
        " answer is late is sent again with the same deduplication token)",
    )

    max_recv_msg_size_mib: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="largest OTLP request, once decompressed (the OpenTelemetry Collector's"
        " default too; an SDK's batch of 512 spans is far below it). Each span of a request"
        " costs ~2 KB while it is decoded and inserted (bench/adversarial.py --scenarios huge)",
    )
    max_concurrent_requests: int = Field(default=64, ge=1)
    batch_max_spans: int = Field(
        default=3072,
        ge=1,
        description="a group commit (one INSERT) holds at most this many spans; smaller groups"
        " keep chDB's memory per INSERT down (bench/README.md: 3072 measured best on 2 cores)",
    )
    batch_flush_interval_s: float = Field(default=0.1, ge=0, le=60)
    batch_inserts_in_flight: int = Field(default=1, ge=1, le=8)
    queue_max_spans: int = Field(default=100_000, ge=1)
    retry_after_s: int = Field(default=1, ge=1, le=3600)

    sql_readonly: bool = True
    sql_max_execution_time_s: float = Field(
        default=60, gt=0, description="a SQL-port or /v1/sql query stops after this long"
    )
    sql_max_memory_usage_mib: int = Field(
        default=1024, ge=16, description="memory one SQL query may use in ClickHouse"
    )
    sql_max_result_mib: int = Field(
        default=128, ge=1, description="a larger query result fails instead of filling memory"
    )
    sql_max_concurrent_queries: int = Field(
        default=4, ge=1, le=64, description="SQL queries run at once; more wait, then are refused"
    )
    sql_max_query_kib: int = Field(
        default=1024,
        ge=1,
        description="largest SQL request body after decompression while sql_readonly (INSERT"
        " bodies with writes on may be up to 1 GiB)",
    )
    sql_token: str | None = Field(
        default=None, description="password of the SQL port and token of POST /v1/sql (reads)"
    )
    api_token: str | None = Field(
        default=None,
        description="the admin token: every API path, and the SQL port as its password too",
    )
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict,
        description="tenant name -> its ingest and read tokens; needs api_token (the admin)",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="listen beyond loopback without api_token (anyone who reaches the ports"
        " can read every span, ack incidents, silence pages); refused at start-up otherwise",
    )

    detect: bool = Field(default=True, description="run the streaming detectors on every span")
    incident_flush_interval_s: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description="incident rows wait up to this long to share one INSERT (0: one per batch)",
    )
    detect_process: bool = Field(
        default=True,
        description="run the detectors in a process of their own (the second core) instead of"
        " in the collector's process",
    )
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    public_url: str = Field(
        default="",
        description="how people reach the API port (the console) from elsewhere, e.g."
        " http://agentwatch.internal:8080: incident links are {public_url}/incidents/{incident_id}"
        " (default: http://<listen or this host's name>:<api_port>)",
    )
    incident_link_template: str = Field(
        default="",
        description="overrides the incident link, e.g. https://grafana/explore?trace={trace_id}"
        " ({incident_id}, {trace_id}, {span_id}, {session_id})",
    )
    incident_quiet_period_s: float = Field(
        default=1800.0, gt=0, description="auto-resolve after this quiet time"
    )
    default_tenant: str = "default"
    policy_file: Path | None = Field(
        default=None,
        description="YAML policy file: the behavioural SLA per agent (reloaded on SIGHUP)",
    )
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    forward: ForwardConfig | None = None
    paging: PagingConfig | None = None

    @field_validator("incident_link_template")
    @classmethod
    def _link_template(cls, value: str) -> str:
        try:
            value.format(**{name: "x" for name in LINK_FIELDS})
        except (KeyError, IndexError, ValueError) as exc:
            fields = ", ".join(f"{{{name}}}" for name in LINK_FIELDS)
            raise ValueError(f"may use only {fields} ({exc})") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if value and (parsed.scheme not in ("http", "https") or not parsed.hostname):
            raise ValueError("expected http(s)://host[:port][/path], e.g. http://agentwatch:8080")
        return value.rstrip("/")

    def link_template(self, api_port: int) -> str:
        """The incident link as a template (``LINK_FIELDS``): ``incident_link_template`` if set,
        else the console's incident page under ``public_url``, else under this host as seen from
        the API's listen address (a wildcard address names the machine; loopback stays loopback,
        so the link opens on this machine only: set public_url for pagers read elsewhere).

        >>> Config(public_url="http://aw.internal:8080/").link_template(8080)
        'http://aw.internal:8080/incidents/{incident_id}'
        >>> Config().link_template(8080)
        'http://127.0.0.1:8080/incidents/{incident_id}'
        """
        if self.incident_link_template:
            return self.incident_link_template
        base = self.public_url
        if not base:
            host = self.listen
            if host in ("0.0.0.0", "::", ""):
                host = socket.getfqdn()
            base = f"http://{f'[{host}]' if ':' in host else host}:{api_port}"
        return base.replace("{", "{{").replace("}", "}}") + "/incidents/{incident_id}"

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("expected http(s)://[user:password@]host[:port][/database]")
        return value

    @field_validator("clickhouse_cluster")
    @classmethod
    def _clickhouse_cluster(cls, value: str | None) -> str | None:
        return None if value is None else check_cluster_name(value)

    @model_validator(mode="after")
    def _cluster_needs_server(self) -> Config:
        if self.clickhouse_cluster and not self.clickhouse_url:
            raise ValueError(
                "clickhouse_cluster: needs clickhouse_url (a host of the cluster); the embedded"
                " store is one process, never a cluster"
            )
        return self

    @model_validator(mode="after")
    def _tenant_tokens(self) -> Config:
        if not self.tenants:
            return self
        if not self.api_token:
            raise ValueError(
                "tenants: need api_token as well (the admin token reads every tenant and changes"
                " containment and paging, which tenant tokens cannot)"
            )
        seen: dict[str, str] = {}
        named = [("api_token", self.api_token), ("sql_token", self.sql_token)]
        for name, tenant in self.tenants.items():
            if not _TENANT_NAME.fullmatch(name):
                raise ValueError(f"tenants: {name!r}: a tenant name is 1-64 of A-Z a-z 0-9 _ . : -")
            if not tenant.ingest_token and not tenant.read_token:
                raise ValueError(f"tenants.{name}: give an ingest_token, a read_token or both")
            named += [
                (f"tenants.{name}.ingest_token", tenant.ingest_token),
                (f"tenants.{name}.read_token", tenant.read_token),
            ]
        for key, token in named:
            if token and token in seen:
                raise ValueError(f"{key} is the same token as {seen[token]}; each must differ")
            if token:
                seen[token] = key
        return self

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Config:
        if not self.loopback_only and not self.api_token and not self.allow_unauthenticated:
            raise ValueError(
                f"listen: {self.listen} reaches beyond this machine, and without api_token anyone"
                " who reaches the ports can read every span and incident, acknowledge and resolve"
                " incidents, silence pages and send test pages; set api_token (or"
                " AGENTWATCH_API_TOKEN), or allow_unauthenticated: true (--allow-unauthenticated) to"
                " run open anyway"
            )
        return self

    @model_validator(mode="after")
    def _ports_distinct(self) -> Config:
        ports = {
            "otlp_grpc_port": self.otlp_grpc_port,
            "otlp_http_port": self.otlp_http_port,
            "sql_port": self.sql_port,
            "api_port": self.api_port,
        }
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port and port in seen:
                raise ValueError(
                    f"{key} and {seen[port]} are both {port}; each listener needs its own port"
                )
            seen[port] = key
        return self

    @property
    def sql_limits(self):
        return SqlLimits(
            max_execution_time_s=self.sql_max_execution_time_s,
            max_memory_usage_mib=self.sql_max_memory_usage_mib,
            max_result_mib=self.sql_max_result_mib,
        )

    @property
    def loopback_only(self) -> bool:
        """Does every listener bind to this machine's loopback only?"""
        if self.listen == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.listen).is_loopback
        except ValueError:
            return False  # a host name: assume it is reachable from elsewhere


def load_config(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults, then ``path`` (YAML), then the ``AGENTWATCH_*`` variables of ``environ`` (the
    CLI passes ``os.environ``; see ``settings_from_env``), then ``overrides`` (flags given)."""
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data.update(loaded)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    origins: dict[tuple[str, ...], str] = {}  # key path -> where its value came from
    for key_path, (variable, value) in settings_from_env(environ or {}).items():
        dotted = ".".join(key_path)
        if key_path[0] in flags:
            log.warning("%s: --%s wins over %s", dotted, key_path[0].replace("_", "-"), variable)
            continue
        if _get(data, key_path) is not None:
            log.warning("%s: %s wins over %s's", dotted, variable, source)
        _put(data, key_path, value, variable)
        origins[key_path] = f"environment ({variable})"
    for key in flags:
        origins[(key,)] = f"command line (--{key.replace('_', '-')})"
    data.update(flags)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, origins, data)) from None
    if config.policy_file is not None:
        check_policy_file(config.policy_file)
    return config


def settings_from_env(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    """Key path -> (variable, value) for every ``AGENTWATCH_*`` setting of ``environ``, shallow
    paths first.

    ``AGENTWATCH_<KEY>`` sets a top-level key; a mapping or list (``tenants``, ``prices``,
    ``paging``, ``forward``, ``embedded_server_settings``) is given whole in YAML or JSON flow
    style, e.g. ``{acme: {ingest_token: t1}}``. ``__`` goes one key deeper and merges over the file's
    section (``AGENTWATCH_PAGING__RETRY_MAX_S``, ``AGENTWATCH_PAGING__RECEIVERS__0__API_KEY``:
    a list item by its index); names are lower-cased, so a mapping key with capitals is given
    whole. ``AGENTWATCH_<KEY>_FILE`` reads the value from a file (Docker and Kubernetes secrets),
    without its trailing newline. An empty variable counts as unset; an unknown one is logged.

    >>> env = {"AGENTWATCH_PAGING__RETRY_MAX_S": "600", "AGENTWATCH_TOKEN": "the CLI's", "HOME": "/"}
    >>> settings_from_env(env)
    {('paging', 'retry_max_s'): ('AGENTWATCH_PAGING__RETRY_MAX_S', '600')}
    """
    found: dict[tuple[str, ...], tuple[str, Any]] = {}
    for variable, raw in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or variable in OTHER_VARIABLES or raw == "":
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        if name.endswith("_file") and name not in Config.model_fields:
            name = name[: -len("_file")]
            if environ.get(env_variable(name)):
                raise ConfigError(f"{variable}: {env_variable(name)} is set too; give one of them")
            try:
                raw = Path(raw).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{variable}: cannot read {raw}: {exc.strerror}") from None
        key_path = tuple(name.split("__"))
        if key_path[0] not in Config.model_fields or not all(key_path):
            log.warning("%s: not a setting of agentwatch serve; ignored", variable)
            continue
        found[key_path] = (variable, _env_value(variable, raw))
    return dict(sorted(found.items(), key=lambda item: len(item[0])))


def _env_value(variable: str, raw: str) -> Any:
    """Text as it came (pydantic reads "4317", "true" or "0.5" as the key's type), but text in
    ``{…}`` or ``[…]`` is a mapping or list in YAML or JSON flow."""
    if not raw.lstrip().startswith(("{", "[")):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{variable}: not valid YAML/JSON{_yaml_problem(exc)}") from None


def _get(data: Any, key_path: tuple[str, ...]) -> Any:
    for key in key_path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        else:
            return None
    return data


def _put(data: dict, key_path: tuple[str, ...], value: Any, variable: str) -> None:
    """Set ``key_path`` in ``data``, making mappings on the way; a list item must exist."""
    *parents, last = key_path
    for depth, key in enumerate([*parents, last]):
        if isinstance(data, list):
            if not key.isdigit() or int(key) >= len(data):
                where = ".".join(key_path[:depth])
                raise ConfigError(
                    f"{variable}: {where} has {len(data)} items; {key!r} is not one of their"
                    " indexes (an item is added in the file, or by giving the whole list)"
                )
            key = int(key)
        if depth == len(parents):
            data[key] = value
            return
        if not isinstance(data[key] if isinstance(data, list) else data.get(key), dict | list):
            data[key] = {}
        data = data[key]


def check_policy_file(path: Path):
    """Load the policy file; a bad one stops start-up with its file, key path and expectation."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise ConfigError(f"policy file: {exc}") from None


def _describe(
    exc: ValidationError, file_source: str, origins: dict[tuple[str, ...], str], data: dict
) -> str:
    """One line per error: where the value came from (the file, a variable or a flag), its key,
    what was expected, what was got (a secret shown as ``***``, by its key's name: ``_shown``)."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        loc = tuple(str(part) for part in error["loc"])
        source = next(
            (origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), file_source
        )
        msg = error["msg"]
        if error["type"] == "value_error":  # our own check's words, without pydantic's prefix
            msg = str(error.get("ctx", {}).get("error", msg))
        if error["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see `agentwatch serve --help`)"
        got = error.get("input")
        shown = (
            ""
            if error["type"] == "extra_forbidden" or isinstance(got, dict)
            else f" (got {_shown(error['loc'], got)})"
        )
        lines.append(f"{source}: {key}: {msg}{shown}")
    text = "\n".join(lines)
    # our own checks' words may quote a value too (a receiver's url): hide every secret there
    for raw, hidden in sorted(_secrets(data).items(), key=lambda item: -len(item[0])):
        text = text.replace(raw, hidden)
    return text


# A key whose name says it holds a secret (or any key under one, e.g. headers.Authorization).
_SECRET_KEY = re.compile(r"password|token|secret|(^|_)key$|headers|authorization", re.I)
# A URL may hold a password (user:password@) or a token in its path (a Slack webhook).
_URL_KEY = re.compile(r"(^|_)(url|endpoint)$", re.I)


def _shown(loc: tuple, value: Any) -> str:
    """``value`` as an error may show it, judged by the names along its key ``loc``."""
    names = [str(part) for part in loc]
    if any(_SECRET_KEY.search(name) for name in names):
        return "'***'"
    if names and _URL_KEY.search(names[-1]) and isinstance(value, str):
        return repr(redact_url(value))
    return repr(value)


def redact_url(text: str) -> str:
    """Scheme, host and port only: ``'tcp://admin:pw@db:9000/x?k=1'`` -> ``'tcp://***@db:9000/…'``."""
    try:
        parts = urlsplit(text.strip())
    except ValueError:
        return "***"
    credentials, _, host = parts.netloc.rpartition("@")
    if not parts.scheme or not host:
        return "***"
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{'***@' if credentials else ''}{host}{rest}"


def _secrets(data: Any, loc: tuple = ()) -> dict[str, str]:
    """Every secret text in the settings -> how an error may show it."""
    if isinstance(data, dict | list):
        items = data.items() if isinstance(data, dict) else enumerate(data)
        return {raw: hidden for k, v in items for raw, hidden in _secrets(v, (*loc, k)).items()}
    if not isinstance(data, str) or len(data) < 4:  # a shorter one could mask ordinary words
        return {}
    shown = _shown(loc, data)
    return {} if shown == repr(data) else {data: shown[1:-1]}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the line (it may hold a secret)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = " ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
    return f"{where}: {what or type(exc).__name__}"
