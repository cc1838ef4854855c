"""The Grafana dashboards of deploy/grafana/, as Grafana runs them: every panel's SQL, with the
ClickHouse plugin's macros expanded as the plugin expands them, against a real collector's SQL
port holding incidents and spans that real OTel SDK exporters sent; and the provisioning files as
Grafana reads them (valid dashboards, unique uids, the provisioned datasource)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import clickhouse_connect
import pytest
import requests
import yaml
from opentelemetry.trace import Status, StatusCode

from tests.conftest import run_collector
from tests.console.agent import run_support_agent
from tests.test_detect_e2e import agent_tracer, wait_for_incidents

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PLUGIN = "grafana-clickhouse-datasource"
#: the plugin's query ``format`` (grafana-plugin-sdk-go sqlutil.FormatQueryOption)
TIME_SERIES, TABLE = 0, 1
LOOP = [1, 2, 3, 4] + [42] * 8  # four orders found, then order 42 (not found) eight times


# --- the plugin's macros ------------------------------------------------------------------------


def expand_macros(sql: str, start: datetime, end: datetime, interval_s: int = 60) -> str:
    """``sql`` as the ClickHouse plugin sends it to the server for the time range ``start`` to
    ``end`` and Grafana's interval: the macros of its ``pkg/macros/macros.go`` the dashboards
    use, with the same text (seconds precision, UTC). A macro's argument is one expression
    without parentheses. An unknown macro fails, so a dashboard cannot use one untested.

    >>> t0 = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    >>> expand_macros("WHERE $__timeFilter(at)", t0, t0 + timedelta(hours=1))
    'WHERE at >= toDateTime(1796619600) AND at <= toDateTime(1796623200)'
    >>> expand_macros("SELECT $__timeInterval(at) AS time", t0, t0, interval_s=30)
    'SELECT toStartOfInterval(toDateTime(at), INTERVAL 30 second) AS time'
    >>> expand_macros("$__fromTime, $__toTime, $__interval_s", t0, t0)
    'toDateTime(1796619600), toDateTime(1796619600), 60'
    >>> expand_macros("$__conditionalAll(x, $v)", t0, t0)
    Traceback (most recent call last):
    ValueError: macro $__conditionalAll is not one the test expands like the plugin
    """
    since, until = int(start.timestamp()), int(end.timestamp())
    with_argument = {
        "timeFilter": lambda c: f"{c} >= toDateTime({since}) AND {c} <= toDateTime({until})",
        "timeInterval": lambda c: (
            f"toStartOfInterval(toDateTime({c}), INTERVAL {max(interval_s, 1)} second)"
        ),
    }
    plain = {
        "fromTime": f"toDateTime({since})",
        "toTime": f"toDateTime({until})",
        "interval_s": str(max(interval_s, 1)),
    }

    def expand(match: re.Match) -> str:
        name, argument = match.group(1), match.group(2)
        if argument is not None and name in with_argument:
            return with_argument[name](argument.strip())
        if argument is None and name in plain:
            return plain[name]
        raise ValueError(f"macro $__{name} is not one the test expands like the plugin")

    return re.sub(r"\$__(\w+)(?:\(([^()]*)\))?", expand, sql)


# --- the provisioning files ---------------------------------------------------------------------


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels_of(dashboard: dict) -> list[dict]:
    """Panels, those inside collapsed rows included."""
    out = []
    for panel in dashboard["panels"]:
        out += [panel] if panel["type"] != "row" else panel.get("panels", [])
    return out


def every_panel() -> list:
    return [
        pytest.param(load(path)["uid"], panel, id=f"{path.stem}:{panel['title']}")
        for path in DASHBOARDS
        for panel in panels_of(load(path))
    ]


def provisioned_datasource() -> dict:
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
    )
    [datasource] = provisioning["datasources"]
    return datasource


def test_the_dashboards_are_valid_and_query_the_provisioned_datasource():
    assert len(DASHBOARDS) >= 2
    datasource = provisioned_datasource()
    assert datasource["type"] == PLUGIN and datasource["uid"]
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids), uids
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["title"] and dashboard.get("id") is None  # Grafana assigns ids
        assert len(dashboard["uid"]) <= 40  # Grafana's limit
        panels = panels_of(dashboard)
        assert len({p["id"] for p in panels}) == len(panels), path.name
        for panel in panels:
            where = f"{path.name}: {panel['title']}"
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, where
            assert panel["datasource"] == {"type": PLUGIN, "uid": datasource["uid"]}, where
            for query in panel["targets"]:
                assert query["datasource"] == panel["datasource"], where
                assert query["editorType"] == "sql" and query["rawSql"].strip(), where
                # the plugin's two names for one choice: its editor's queryType and the
                # backend's format (a time series is pivoted from long to wide by the plugin)
                expected = (
                    (TIME_SERIES, "timeSeries")
                    if panel["type"] == "timeseries"
                    else (TABLE, "table")
                )
                assert (query["format"], query["queryType"]) == expected, where


def test_docker_compose_mounts_the_dashboards_where_the_provider_reads_them():
    [provider] = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "agentwatch.yaml").read_text()
    )["providers"]
    grafana = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert PLUGIN in grafana["environment"]["GF_INSTALL_PLUGINS"]


# --- a store with real incidents and spans ------------------------------------------------------


def resolve(collector, incident_id: str, false_alarm: bool) -> None:
    answer = requests.post(
        f"{collector.api_url}/v1/incidents/{incident_id}/resolve",
        json={"actor": "alice", "reason": "grafana test", "false_alarm": false_alarm},
    )
    assert answer.status_code == 200, answer.text


def rate_limited_billing_agent(collector, sessions: int = 8) -> None:
    """Every session's one model call refused with a 429 by OpenAI."""
    provider, tracer = agent_tracer(collector, "billing-svc")
    for session in range(sessions):
        root = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "billing",
            "gen_ai.conversation.id": f"rl-{session}",
        }
        chat = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.provider.name": "openai",
            "error.type": "429",
        }
        with tracer.start_as_current_span("invoke_agent billing", attributes=root):
            with tracer.start_as_current_span("chat gpt-4o", attributes=chat) as span:
                span.set_status(Status(StatusCode.ERROR, "Error code: 429 - rate limit reached"))
    provider.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A collector whose store holds what the dashboards are for: a support agent's loop
    (session loop-1) resolved as a false alarm, the same loop again in session loop-2 (the
    fingerprint reopened, still open), and OpenAI's rate limits across 8 billing sessions,
    resolved as fixed."""
    with run_collector(tmp_path_factory.mktemp("grafana")) as collector:
        run_support_agent(collector, "loop-1", "u-1", LOOP)
        first = wait_for_incidents(collector, "detector = 'loop'")
        assert first, "the loop detector opened no incident"
        for incident in first:
            resolve(collector, incident["incident_id"], false_alarm=True)
        run_support_agent(collector, "loop-2", "u-2", LOOP)
        again = wait_for_incidents(collector, "detector = 'loop' AND status = 'open'")
        assert again, "the same loop again opened no incident"
        rate_limited_billing_agent(collector)
        [rate_limit] = wait_for_incidents(collector, "detector = 'infrastructure'")
        resolve(collector, rate_limit["incident_id"], false_alarm=False)
        collector.wait_for_rows("SELECT 1 FROM otel_traces WHERE ServiceName = 'billing-svc'", 16)
        yield collector


@pytest.fixture(scope="module")
def grafana_query(store):
    """Runs a panel's query as the plugin would for the last hour, through the SQL port (the
    read-only gate), with clickhouse-connect: ``(column names, rows)``."""
    client = clickhouse_connect.get_client(host="127.0.0.1", port=store.ports["sql"])
    now = datetime.now(UTC)

    def run(raw_sql: str, interval_s: int = 60) -> tuple[list[str], list[tuple]]:
        since, until = now - timedelta(hours=1), now + timedelta(minutes=5)
        sql = expand_macros(raw_sql, since, until, interval_s)
        assert "$" not in sql, f"a Grafana variable is left in the SQL: {sql}"
        result = client.query(sql)
        return list(result.column_names), result.result_rows

    yield run
    client.close()


# --- every panel against it --------------------------------------------------------------------

#: The columns each panel shows, in order: what a panel's overrides, units and links name.
EXPECTED_COLUMNS = {
    ("agentwatch-incidents", "Incidents opened, by severity"): ["time", "SEV1", "SEV2", "SEV3"],
    ("agentwatch-incidents", "Incidents opened, by class"): ["time", "semantic", "infrastructure"],
    ("agentwatch-incidents", "Not resolved now, by severity"): ["SEV1", "SEV2", "SEV3"],
    ("agentwatch-incidents", "Time to resolve (MTTR), by class and severity"): [
        "class", "severity", "resolved", "auto_resolved",
        "avg_minutes_to_resolve", "median_minutes_to_resolve",
    ],
    ("agentwatch-incidents", "Median minutes to resolve, by class"): [
        "time", "class", "median_minutes",
    ],
    ("agentwatch-incidents", "Resolutions: fixed, false alarm, quiet"): [
        "time", "fixed", "false_alarm", "quiet",
    ],
    ("agentwatch-incidents", "Recurring problems (the same fingerprint reopened)"): [
        "latest_title", "service", "agent", "detector", "kind", "worst_severity", "incidents",
        "reopened", "unresolved", "total_occurrences", "first_seen", "last_seen",
        "latest_incident_id",
    ],
    ("agentwatch-incidents", "Detector field precision"): [
        "tenant", "detector", "kind", "field_precision", "resolved_by_people", "false_alarms",
        "resolved_quietly", "resolved",
    ],
    ("agentwatch-agents", "Tokens by agent and model"): ["time", "agent_model", "tokens"],
    ("agentwatch-agents", "Spend by agent and model"): [
        "agent", "model", "llm_calls", "input_tokens", "output_tokens", "cache_read_tokens",
        "cost_usd",
    ],
    ("agentwatch-agents", "Most expensive sessions"): [
        "session", "user", "agent", "service", "traces", "llm_calls", "tool_calls", "tokens",
        "cost_usd", "started", "last_span",
    ],
    ("agentwatch-agents", "Failed spans, by cause"): ["time", "cause", "failed_spans"],
    ("agentwatch-agents", "Tool error rate, by tool"): ["time", "tool", "error_rate"],
    ("agentwatch-agents", "Model API error rate, by provider"): ["time", "provider", "error_rate"],
    ("agentwatch-agents", "Failures by tool or model, and cause"): [
        "tool_or_model", "step", "provider", "error_type", "http_status", "failed_spans",
        "traces", "last_failure",
    ],
}  # fmt: skip


@pytest.mark.parametrize("uid, panel", every_panel())
def test_every_panel_runs_on_a_real_store_and_returns_its_columns(grafana_query, uid, panel):
    [query] = panel["targets"]
    columns, rows = grafana_query(query["rawSql"])
    assert columns == EXPECTED_COLUMNS[uid, panel["title"]]
    assert rows, "the panel would be empty on a store holding incidents and spans"
    if panel["type"] == "timeseries":  # the plugin needs a time column, and rows in time order
        times = [row[0] for row in rows]
        assert all(isinstance(t, datetime) for t in times) and times == sorted(times)


#: an interval of ~31 years: a time series comes back as one point per series, to compare totals
ONE_POINT_S = 10**9


def rows_of(grafana_query, uid: str, title: str) -> list[dict]:
    dashboard = load(GRAFANA / "dashboards" / f"{uid}.json")
    [panel] = [p for p in panels_of(dashboard) if p["title"] == title]
    columns, rows = grafana_query(panel["targets"][0]["rawSql"], ONE_POINT_S)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_incident_panels_show_the_loop_reopened_and_each_detectors_verdicts(grafana_query):
    incidents = "agentwatch-incidents"
    recurring = rows_of(
        grafana_query, incidents, "Recurring problems (the same fingerprint reopened)"
    )
    [loop] = [r for r in recurring if r["detector"] == "loop"]
    assert (loop["agent"], loop["service"]) == ("support", "support-svc")
    assert loop["incidents"] >= 2 and loop["reopened"] == loop["incidents"] - 1
    assert loop["unresolved"] >= 1  # loop-2's incident is still open

    precision = {
        r["detector"]: r for r in rows_of(grafana_query, incidents, "Detector field precision")
    }
    assert precision["loop"]["field_precision"] == 0.0  # every loop incident: a false alarm
    assert precision["infrastructure"]["field_precision"] == 1.0  # the rate limit: fixed
    ended = rows_of(grafana_query, incidents, "Resolutions: fixed, false alarm, quiet")
    assert [sum(r[k] for r in ended) for k in ("fixed", "false_alarm", "quiet")] == [
        1, precision["loop"]["false_alarms"], 0,
    ]  # fmt: skip

    mttr = rows_of(grafana_query, incidents, "Time to resolve (MTTR), by class and severity")
    assert {r["class"] for r in mttr} == {"semantic", "infrastructure"}
    assert all(r["resolved"] >= 1 and r["median_minutes_to_resolve"] >= 0 for r in mttr)

    by_class = rows_of(grafana_query, incidents, "Incidents opened, by class")
    assert sum(r["infrastructure"] for r in by_class) == 1
    assert sum(r["semantic"] for r in by_class) == loop["incidents"]
    opened = rows_of(grafana_query, incidents, "Incidents opened, by severity")
    assert sum(r["SEV1"] + r["SEV2"] + r["SEV3"] for r in opened) == 1 + loop["incidents"]


def test_agent_panels_show_spend_and_failures_where_they_happened(grafana_query):
    agents = "agentwatch-agents"
    sessions = rows_of(grafana_query, agents, "Most expensive sessions")
    # the support runs made every priced call; the billing runs' calls were refused
    assert {r["session"] for r in sessions[:2]} == {"loop-1", "loop-2"}
    top = sessions[0]
    assert (top["agent"], top["llm_calls"], top["tool_calls"]) == ("support", 12, 12)
    assert top["cost_usd"] > 0 and top["user"] in ("u-1", "u-2")

    spend = rows_of(grafana_query, agents, "Spend by agent and model")
    by_model = {(r["agent"], r["model"]): r for r in spend}
    assert by_model["support", "gpt-4o-mini"]["llm_calls"] == 24  # two sessions of 12 turns
    assert by_model["billing", "gpt-4o"]["llm_calls"] == 8

    causes = {}
    for r in rows_of(grafana_query, agents, "Failed spans, by cause"):
        causes[r["cause"]] = causes.get(r["cause"], 0) + r["failed_spans"]
    assert causes["OrderNotFound"] == 16  # order 42, eight times in each support session
    assert sum(causes.values()) == 16 + 8  # and the eight rate-limited model calls

    [lookup] = rows_of(grafana_query, agents, "Tool error rate, by tool")
    assert lookup["tool"] == "lookup_order" and lookup["error_rate"] == pytest.approx(16 / 24)
    providers = {
        r["provider"]: r
        for r in rows_of(grafana_query, agents, "Model API error rate, by provider")
    }
    assert providers["openai"]["error_rate"] == 1.0
