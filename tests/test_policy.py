"""The policy file: loading, resolution per agent, errors, JSON Schema, CLI, serve and reload."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from agentwatch.config import Config, ConfigError, load_config
from analyzer.detectors.loop import LoopDetector
from analyzer.policy import (
    ACTIONS,
    DETECTORS,
    RESOLVE_CACHE_SIZE,
    SEVERITIES,
    PolicyError,
    ToolConstraint,
    load_policy,
    parse_policy,
    policy_json_schema,
)
from analyzer.session import SessionTable
from tests.analyzer.timeline import run, tool

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "testdata" / "policy"
GOOD = DATA / "good.yaml"
SCHEMA_FILE = ROOT / "schemas" / "policy.schema.json"

# bad file -> (key path, what was expected), both must appear in the message
BAD = {
    "bad_unknown_detector.yaml": ("defaults.thresholds", "unknown detector name 'loopy'"),
    "bad_threshold_key.yaml": ("defaults.thresholds.loop", "unknown threshold 'repeat'"),
    "bad_threshold_type.yaml": ("defaults.thresholds.loop.repeats", "expected a valid integer"),
    "bad_severity.yaml": ("agents[0].severity.loop", "'SEV1', 'SEV2' or 'SEV3'"),
    "bad_action.yaml": ("agents[1].actions.SEV1", "'pause_session'"),
    "bad_action_key.yaml": ("agents[0].actions", "unknown severity (SEV1..SEV3) or detector name"),
    "bad_negative_budget.yaml": (
        "agents[0].budgets.session_cost_usd",
        "expected >= 0 (got -1.0)",
    ),
    "bad_unknown_key.yaml": ("agents[0]", "unknown key 'allowed_tool'"),
    "bad_missing_match.yaml": ("agents[0].match", "required key missing"),
    "bad_constraint.yaml": ("agents[0].tool_constraints.read_file", "unknown key 'paths'"),
    "bad_not_mapping.yaml": ("", "expected a mapping"),
    "bad_yaml.yaml": ("", "not valid YAML"),
}


def agentwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentwatch.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


# --- loading and resolution ---------------------------------------------------------------------


def test_good_file_resolves_per_agent_first_match_with_defaults_merged_under():
    policy = load_policy(GOOD)
    assert [policy.rule_name(i) for i in range(3)] == ["support", "analytics", "everyone-else"]

    support = policy.for_agent("support-eu", "triage")
    assert support.rule == "support"
    assert support.allowed_tools == (
        "search_docs",
        "get_weather",
        "lookup_order",
        "read_file",
        "http_get",
    )
    assert support.consequential_tools == ("send_*", "delete_*", "refund_*")
    assert (support.session_cost_usd, support.session_tokens) == (1.0, 500_000)
    assert support.tool_constraints["read_file"] == ToolConstraint(path_prefixes=("/srv/data",))
    assert support.tool_constraints["http_get"].hosts == ("api.example.com", "*.docs.example.com")
    # thresholds merge per detector and key: the rule's repeats over the defaults' window
    assert support.threshold("loop", "repeats", 99) == 2
    assert support.threshold("loop", "window", 99) == 12
    assert support.threshold("cost_runaway", "factor", 99) == 10
    assert support.threshold("token_ratio", "z", 4.5) == 4.5  # not set anywhere: the default
    assert dict(support.severity) == {"token_ratio": "SEV2"}
    assert dict(support.actions) == {"SEV1": "pause_session", "loop": "freeze_session"}
    assert not support.allows("refund_order") and support.is_consequential("refund_order")
    assert support.allows("final_answer")  # built in

    analytics = policy.for_agent("analytics", "sql-reader")
    assert analytics.rule == "analytics"
    assert analytics.tool_constraints["run_sql"].sql_verbs == ("SELECT",)
    assert analytics.session_cost_usd is None and analytics.session_tokens == 2_000_000
    assert analytics.threshold("loop", "repeats", 99) == 3  # the defaults' value
    assert dict(analytics.actions) == {"SEV1": "pause_session"}

    # the agent glob does not match: the next rule that matches wins (the catch-all)
    other = policy.for_agent("analytics", "chat")
    assert other.rule == "everyone-else" and other.allowed_tools is None
    assert other.session_cost_usd == 5.0
    # first match wins even when a later rule also matches
    assert policy.for_agent("support-us", "").rule == "support"


def test_no_rule_matching_gets_the_defaults_alone_and_globs_are_case_sensitive():
    policy = parse_policy(
        {
            "defaults": {"budgets": {"session_tokens": 10}, "severity": {"loop": "SEV1"}},
            "agents": [{"match": {"service": "Shop-?", "agent": "[ab]*"}, "name": "shop"}],
        }
    )
    assert policy.for_agent("Shop-1", "alpha").rule == "shop"
    assert policy.for_agent("shop-1", "alpha").rule == "defaults"
    assert policy.for_agent("Shop-12", "alpha").rule == "defaults"
    fallback = policy.for_agent("Shop-1", "gamma")
    assert (fallback.rule, fallback.session_tokens, dict(fallback.severity)) == (
        "defaults",
        10,
        {"loop": "SEV1"},
    )
    assert parse_policy(None).for_agent("x", "y").rule == "defaults"  # an empty file


def test_resolutions_are_cached_with_a_bound():
    policy = load_policy(GOOD)
    first = policy.for_agent("support-eu", "triage")
    assert policy.for_agent("support-eu", "triage") is first
    assert policy.for_agent.cache_info().maxsize == RESOLVE_CACHE_SIZE


def test_resolved_policy_is_read_only():
    resolved = load_policy(GOOD).for_agent("support-eu", "triage")
    with pytest.raises(TypeError):
        resolved.thresholds["loop"]["repeats"] = 5  # type: ignore[index]
    with pytest.raises(TypeError):
        resolved.actions["SEV2"] = "kill_agent"  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_names_file_key_path_and_expectation(name: str):
    key_path, expected = BAD[name]
    with pytest.raises(PolicyError) as caught:
        load_policy(DATA / name)
    message = str(caught.value)
    assert message.startswith(str(DATA / name) + ": ")
    assert f": {key_path}: " in message if key_path else True
    assert expected in message


def test_missing_file():
    with pytest.raises(PolicyError, match="nope.yaml: file not found"):
        load_policy(DATA / "nope.yaml")


def test_every_error_is_reported_at_once():
    with pytest.raises(PolicyError) as caught:
        parse_policy(
            {
                "agents": [
                    {"match": {}, "budgets": {"session_tokens": -5}},
                    {"match": {}, "severity": {"loop": "high"}},
                ]
            },
            "p.yaml",
        )
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("p.yaml: agents[0].budgets.session_tokens: ")
    assert lines[1].startswith("p.yaml: agents[1].severity.loop: ")


def test_names_match_the_module_constants():
    spec = policy_json_schema()["$defs"]
    assert tuple(spec["Thresholds"]["properties"]) == DETECTORS
    assert tuple(spec["SeverityOverrides"]["properties"]) == DETECTORS
    assert tuple(spec["Actions"]["properties"]) == SEVERITIES + DETECTORS
    assert tuple(spec["Actions"]["properties"]["SEV1"]["anyOf"][0]["enum"]) == ACTIONS


def test_every_detector_threshold_name_is_one_its_detector_reads():
    """A threshold the file accepts must be one a detector reads (grep of the detectors)."""
    sources = {d: (ROOT / "analyzer" / "detectors" / f"{d}.py").read_text() for d in DETECTORS}
    for detector, keys in _threshold_keys().items():
        for key in keys:
            assert f'"{key}"' in sources[detector], f"{detector}.{key} is read by nobody"


def _threshold_keys() -> dict[str, list[str]]:
    defs = policy_json_schema()["$defs"]
    out = {}
    for detector, prop in defs["Thresholds"]["properties"].items():
        ref = prop["anyOf"][0]["$ref"].rsplit("/", 1)[-1]
        out[detector] = list(defs[ref].get("properties", {}))
    return out


# --- the JSON Schema ----------------------------------------------------------------------------


def test_schema_file_is_the_generated_one():
    """schemas/policy.schema.json is generated from the models (`agentwatch policy schema`)."""
    assert json.loads(SCHEMA_FILE.read_text()) == policy_json_schema(), (
        "regenerate: agentwatch policy schema > schemas/policy.schema.json"
    )


def test_schema_accepts_the_good_and_rejects_the_bad():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for good in (GOOD, ROOT / "deploy" / "policy.example.yaml"):
        validator.validate(yaml.safe_load(good.read_text()))
    for name in BAD:
        if name == "bad_yaml.yaml":
            continue  # not YAML at all: nothing for a schema to judge
        data = yaml.safe_load((DATA / name).read_text())
        assert list(validator.iter_errors(data)), f"the schema accepts {name}"


def test_example_is_the_good_test_file():
    assert (ROOT / "deploy" / "policy.example.yaml").read_text() == GOOD.read_text()


# --- agentwatch policy check --------------------------------------------------------------------


def test_policy_check_good_prints_a_summary_and_exits_0():
    result = agentwatch("policy", "check", str(GOOD))
    assert result.returncode == 0, result.stderr
    assert "OK, 3 agents rules" in result.stdout
    assert "support: service='support-*' agent='*'" in result.stdout
    assert "analytics: service='analytics' agent='sql-*'" in result.stdout
    assert "defaults: thresholds(loop, context_growth, cost_runaway)" in result.stdout


def test_policy_check_shows_one_agents_resolved_policy():
    result = agentwatch("policy", "check", str(GOOD), "--agent", "support-eu/triage")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout.split("resolves to:\n", 1)[1])
    assert resolved["rule"] == "support"
    assert resolved["thresholds"]["loop"] == {
        "repeats": 2,
        "window": 12,
        "cycles": 4,
        "failures": 3,
    }
    assert resolved["session_cost_usd"] == 1.0

    bad_agent = agentwatch("policy", "check", str(GOOD), "--agent", "no-slash")
    assert bad_agent.returncode == 2 and "SERVICE/AGENT" in bad_agent.stderr


def test_policy_check_bad_prints_the_errors_and_exits_1():
    result = agentwatch("policy", "check", str(DATA / "bad_negative_budget.yaml"))
    assert result.returncode == 1
    assert "agents[0].budgets.session_cost_usd" in result.stderr
    assert "expected >= 0 (got -1.0)" in result.stderr
    assert result.stdout == ""


# --- serve --------------------------------------------------------------------------------------


def test_config_validates_the_policy_file(tmp_path: Path):
    assert load_config(overrides={"policy_file": GOOD}).policy_file == GOOD
    with pytest.raises(ConfigError, match=r"bad_severity.yaml: agents\[0\].severity.loop"):
        load_config(overrides={"policy_file": DATA / "bad_severity.yaml"})
    config_file = tmp_path / "agentwatch.yaml"
    config_file.write_text(f"policy_file: {DATA / 'nope.yaml'}\n")
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(config_file)


def test_serve_refuses_a_bad_policy(tmp_path: Path):
    bad = DATA / "bad_action.yaml"
    result = agentwatch("serve", "--policy", str(bad), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert str(bad) in result.stderr
    assert "agents[1].actions.SEV1" in result.stderr and "'pause_session'" in result.stderr
    assert not (tmp_path / "data").exists()  # stopped before opening the store


# --- detectors read the policy ------------------------------------------------------------------


def test_loop_repeats_1_fires_at_the_second_identical_call():
    policy = parse_policy(
        {
            "agents": [
                {
                    "match": {"service": "support-*"},
                    "thresholds": {"loop": {"repeats": 1}},
                    "severity": {"loop": "SEV1"},
                }
            ]
        }
    )
    sessions = SessionTable(policy_for=policy.for_agent)
    steps = [tool(t, "lookup_order", args=42) for t in (1, 2, 3)]
    [finding] = run(LoopDetector(), steps, sessions)
    assert finding.step is steps[1] and finding.kind == "repeated_call"
    assert finding.severity == "SEV1"

    # another service matches no rule: the detector's own default (the fourth call)
    other = [tool(t, "lookup_order", args=42, service="billing", session="s2") for t in range(1, 6)]
    [finding] = run(LoopDetector(), other, sessions)
    assert finding.step is other[3] and finding.severity == "SEV2"


def test_loop_window_cycles_and_failures_come_from_the_policy():
    policy = parse_policy(
        {"defaults": {"thresholds": {"loop": {"cycles": 2, "failures": 2, "repeats": 10}}}}
    )
    cycle = [tool(t, "search" if t % 2 else "fetch", args=t % 2) for t in range(1, 5)]
    [finding] = run(LoopDetector(), cycle, SessionTable(policy_for=policy.for_agent))
    assert finding.kind == "cycle" and finding.step is cycle[3]

    rejected = [tool(t, "refund", args=t, failed=True, http_status=400) for t in (1, 2)]
    [finding] = run(LoopDetector(), rejected, SessionTable(policy_for=policy.for_agent))
    assert finding.kind == "repeated_failure"


# --- reload -------------------------------------------------------------------------------------


def _write(path: Path, repeats: int) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "agents": [
                    {
                        "name": f"repeats-{repeats}",
                        "match": {"service": "support-*"},
                        "thresholds": {"loop": {"repeats": repeats}},
                    }
                ]
            }
        )
    )


def test_reload_swaps_the_policy_and_keeps_session_state(tmp_path: Path, caplog):
    from agentwatch.app import Collector

    policy_file = tmp_path / "policy.yaml"
    _write(policy_file, 3)
    config = Config(policy_file=policy_file, data_dir=tmp_path / "data", detect_process=False)
    collector = Collector(config)
    try:
        analyzer = asyncio.run(collector._build_analyzer())
        sessions, loop = analyzer.detection.sessions, LoopDetector()
        old = [tool(t, "lookup_order", args=1, session="old") for t in (1, 2)]
        assert run(loop, old, sessions) == []
        before = sessions.for_step(tool(3, "noop", session="old"), 3)
        assert before.policy.rule == "repeats-3"

        _write(policy_file, 1)
        assert collector.reload_policy().spec.agents[0].name == "repeats-1"

        # the existing session keeps its state and its resolved rule ...
        assert len(sessions) == 1
        same = [tool(t, "lookup_order", args=1, session="old") for t in (4, 5)]
        [finding] = run(loop, same, sessions)
        assert finding.step is same[1]  # the 4th identical call of that session: counts were kept
        assert sessions.for_step(same[1], 6) is before and before.policy.rule == "repeats-3"
        # ... and a new session gets the new policy
        new = [tool(t, "lookup_order", args=1, session="new") for t in (7, 8)]
        [finding] = run(loop, new, sessions)
        assert finding.step is new[1]

        # a bad reload keeps the policy in force
        policy_file.write_text("agents: [{match: {}, actions: {SEV1: nuke}}]\n")
        with pytest.raises(PolicyError, match=r"agents\[0\].actions.SEV1"):
            collector.reload_policy()
        assert collector.policy.spec.agents[0].name == "repeats-1"
        collector._reload_on_signal()  # SIGHUP: logs instead of raising
        assert "policy not reloaded" in caplog.text
    finally:
        collector._executor.shutdown()


def test_reload_without_a_policy_file_is_an_error(tmp_path: Path):
    from agentwatch.app import Collector

    collector = Collector(Config(data_dir=tmp_path / "data", detect_process=False))
    try:
        with pytest.raises(PolicyError, match="no policy file configured"):
            collector.reload_policy()
        analyzer = asyncio.run(collector._build_analyzer())
        state = analyzer.detection.sessions.for_step(tool(1, "x"), 1)
        assert state.policy.rule == "default"
    finally:
        collector._executor.shutdown()


def test_a_reload_reaches_the_detection_process(collector_factory, tmp_path: Path):
    """With the detectors in their own process (the default), sessions first seen after a reload
    are judged by the new policy there too."""
    from tests.test_detect_e2e import run_agent, wait_for_incidents

    policy_file = tmp_path / "policy.yaml"
    _write(policy_file, 5)
    with collector_factory(policy_file=policy_file) as collector:
        run_agent(collector, "before", "u-1", [7] * 3)  # 3 identical calls: no loop at repeats 5
        collector.wait_for_rows("SELECT 1 FROM otel_traces WHERE SessionId = 'before'", 4)
        _write(policy_file, 1)
        collector.call(_reload(collector.collector))
        run_agent(collector, "after", "u-2", [7] * 3)  # the 2nd identical call is a loop now
        [incident] = wait_for_incidents(collector, "detector = 'loop'")
        assert incident["session_id"] == "after"


async def _reload(collector) -> None:
    collector.reload_policy()
    await asyncio.sleep(0.2)  # the new policy is on its way to the detection process
