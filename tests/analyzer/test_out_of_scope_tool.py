"""Out-of-scope tool detector timelines on a virtual clock."""

from __future__ import annotations

import pytest

from analyzer.detectors.out_of_scope_tool import OutOfScopeToolDetector
from analyzer.policy import AgentPolicy, ToolConstraint
from analyzer.session import SessionTable
from tests.analyzer.timeline import llm, run, tool, tool_with_args


def run_under(detector, steps, policy: AgentPolicy) -> list:
    """``run`` with every session under ``policy``."""
    return run(detector, steps, SessionTable(policy_for=lambda service, agent: policy))


SUPPORT = AgentPolicy(
    rule="support",
    allowed_tools=("search_docs", "lookup_order", "read_file", "http_get", "run_sql"),
    tool_constraints={
        "read_file": ToolConstraint(path_prefixes=("/srv/data",)),
        "http_get": ToolConstraint(hosts=("api.example.com",)),
        "run_sql": ToolConstraint(sql_verbs=("SELECT",)),
    },
)


def findings(steps, policy: AgentPolicy = SUPPORT) -> list:
    return run_under(OutOfScopeToolDetector(), steps, policy)


def test_allowed_tools_in_a_normal_session_open_nothing():
    steps = [
        llm(0, 2000, 300), tool(1, "search_docs", 1), llm(2, 2500, 300), tool(3, "lookup_order", 2),
        tool_with_args(4, "read_file", {"path": "/srv/data/x.csv"}),
        tool_with_args(5, "http_get", {"url": "https://api.example.com/v1/orders?id=1"}),
        tool_with_args(6, "run_sql", {"query": "SELECT * FROM orders WHERE id = 1"}),
    ]  # fmt: skip
    assert findings(steps) == []


def test_unlisted_consequential_tool_is_sev1_at_the_call():
    steps = [tool(1, "search_docs", 1), tool_with_args(2, "send_email", {"to": "x@y.z"})]
    [f] = findings(steps)
    assert (f.detector, f.kind, f.incident_class, f.severity, f.signature) == (
        "out_of_scope_tool",
        "unlisted_tool",
        "semantic",
        "SEV1",
        "send_email",
    )
    assert f.step is steps[1]
    assert f.evidence[1]["span_id"] == steps[1].span_id
    assert f.evidence[2]["rule"] == "support" and f.evidence[2]["consequential"] is True


def test_unlisted_harmless_tool_is_sev2_and_reported_once_per_session():
    steps = [tool(t, "get_weather", t) for t in (1, 2, 3)]
    [f] = findings(steps)
    assert (f.kind, f.severity, f.signature) == ("unlisted_tool", "SEV2", "get_weather")
    assert f.step is steps[0]


def test_a_failed_attempt_is_still_flagged():
    [f] = findings([tool(1, "delete_account", 1, failed=True, http_status=403)])
    assert (f.kind, f.severity) == ("unlisted_tool", "SEV1")


@pytest.mark.parametrize("name", ["final_answer", "transfer_to_billing", "think"])
def test_builtin_framework_tools_are_never_out_of_scope(name):
    assert findings([tool(1, name, 1)]) == []


def test_no_scope_declared_is_silent():
    steps = [tool(1, "send_email", 1), tool_with_args(2, "read_file", {"path": "/etc/passwd"})]
    assert run(OutOfScopeToolDetector(), steps) == []  # the default policy declares nothing


def test_allowed_tools_may_be_globs():
    policy = AgentPolicy(allowed_tools=("search_*",))
    assert findings([tool(1, "search_web", 1)], policy) == []
    assert len(findings([tool(1, "browse_web", 1)], policy)) == 1


@pytest.mark.parametrize(
    "args",
    [
        {"path": "/etc/passwd"},
        {"path": "data/../../etc"},
        {"path": "/srv/data/../../etc/passwd"},
        {"path": "/srv/database/x"},  # a sibling sharing the prefix's letters, not under it
        {"filename": "~/.ssh/id_rsa"},
        {"options": {"paths": ["/srv/data/a.csv", "/var/log/auth.log"]}},
        {"target": "file:///etc/shadow"},
        {"path": "//etc/passwd"},
    ],
)
def test_path_outside_the_allowed_prefix(args):
    [f] = findings([tool_with_args(1, "read_file", args)])
    assert (f.kind, f.severity, f.signature) == ("argument_outside_scope", "SEV2", "read_file:path")
    assert f.evidence[2]["constraint"] == "path" and f.evidence[2]["allowed"] == ["/srv/data"]


@pytest.mark.parametrize(
    "args",
    [
        {"path": "/srv/data/x.csv"},
        {"path": "/srv/data"},
        {"path": "/srv/data/reports/../x.csv"},
        {"path": "x.csv"},  # relative to the tool's own root
        {"path": "/srv/data/x.csv", "encoding": "utf-8", "limit": 10},
    ],
)
def test_path_inside_the_allowed_prefix(args):
    assert findings([tool_with_args(1, "read_file", args)]) == []


def test_relative_prefixes_bound_relative_paths():
    policy = AgentPolicy(
        allowed_tools=("read_file",),
        tool_constraints={"read_file": ToolConstraint(path_prefixes=("data/",))},
    )
    assert findings([tool_with_args(1, "read_file", {"path": "data/x.csv"})], policy) == []
    assert len(findings([tool_with_args(1, "read_file", {"path": "secrets/x"})], policy)) == 1


@pytest.mark.parametrize(
    "args",
    [
        {"url": "https://evil.example.com/steal"},
        {"url": "https://api.example.com.evil.io/x"},
        {"url": "https://api.example.com@evil.io/x"},  # userinfo trick
        {"host": "evil.example.com"},
        {"body": {"callback": "http://attacker.net/hook"}},
    ],
)
def test_host_outside_the_allowed_hosts(args):
    [f] = findings([tool_with_args(1, "http_get", args)])
    assert (f.kind, f.signature) == ("argument_outside_scope", "http_get:host")


@pytest.mark.parametrize(
    "args",
    [
        {"url": "https://api.example.com/v1"},
        {"url": "HTTPS://API.Example.com:443/v1"},
        {"url": "https://eu.api.example.com/v1"},  # a subdomain
        {"host": "api.example.com"},
        {"url": "/v1/orders"},  # relative: no host named
    ],
)
def test_host_inside_the_allowed_hosts(args):
    assert findings([tool_with_args(1, "http_get", args)]) == []


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM orders",
        "  delete from orders where 1=1",
        "SELECT 1; DROP TABLE orders",
        "-- just a read\nUPDATE orders SET paid = 1",
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
    ],
)
def test_sql_verb_outside_the_allowed_verbs(sql):
    [f] = findings([tool_with_args(1, "run_sql", {"query": sql})])
    assert (f.kind, f.signature) == ("argument_outside_scope", "run_sql:sql")


@pytest.mark.parametrize(
    "sql",
    [
        "/* c */ select * from orders",
        "SELECT note FROM orders WHERE note = 'a; delete from x'",
        "select 1;",
        "WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent",
        "SELECT updated_at FROM orders",
    ],
)
def test_sql_with_allowed_verbs(sql):
    assert findings([tool_with_args(1, "run_sql", {"sql": sql})]) == []


def test_consequential_tool_with_arguments_out_of_scope_is_sev1():
    policy = AgentPolicy(
        allowed_tools=("write_file",),
        tool_constraints={"write_*": ToolConstraint(path_prefixes=("/srv/out",))},
    )
    [f] = findings([tool_with_args(1, "write_file", {"path": "/etc/cron.d/x"})], policy)
    assert (f.severity, f.signature) == ("SEV1", "write_file:path")


def test_each_constraint_kind_is_its_own_signature_once_per_session():
    policy = AgentPolicy(
        allowed_tools=("fetch",),
        tool_constraints={"fetch": ToolConstraint(path_prefixes=("/srv",), hosts=("a.com",))},
    )
    steps = [
        tool_with_args(1, "fetch", {"path": "/etc/a"}),
        tool_with_args(2, "fetch", {"path": "/etc/b"}),
        tool_with_args(3, "fetch", {"url": "https://b.com"}),
        tool_with_args(4, "fetch", {"url": "https://c.com"}),
    ]
    assert [(f.signature, f.step) for f in findings(steps, policy)] == [
        ("fetch:path", steps[0]),
        ("fetch:host", steps[2]),
    ]


def test_sessions_do_not_mix():
    steps = [tool(t, "get_weather", t, session=f"s{t}") for t in (1, 2, 3)]
    assert [f.step for f in findings(steps)] == steps  # once per session, each session its own


def test_policy_severity_override_wins():
    policy = AgentPolicy(allowed_tools=("search_docs",), severity={"out_of_scope_tool": "SEV3"})
    [f] = findings([tool(1, "send_email", 1)], policy)
    assert f.severity == "SEV3"


def test_arguments_that_are_not_json_are_checked_as_one_value():
    [f] = findings([tool_with_args(1, "read_file", "../../etc/passwd")])
    assert f.signature == "read_file:path"


def test_llm_steps_are_ignored():
    assert findings([llm(1, 100, 10)]) == []
