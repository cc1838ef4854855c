"""What a drill sends: one failure's agent runs, as spans of the OTel GenAI convention.

``plan(scenario, drill_id, service, agent, policy, prices)`` gives the runs as plain data (JSON for
the API: ``agentwatch gameday run`` sends them with the OpenTelemetry SDK). Each scenario is sized
from the thresholds in force for that agent (the detector's default unless the policy overrides
it) so that its detector fires without a policy file:

========================  ====================  ===============================================
scenario                  detector (kind)       the runs
========================  ====================  ===============================================
``loop``                  loop                  one run calling ``lookup_order`` with the same
                          (repeated_call)       arguments ``repeats + 3`` times, a model call
                                                before each
``cost_spiral``           cost_runaway          one run of large model calls until its cost is
                                                1.5 × the budget or the cold-start guard
``out_of_scope``          out_of_scope_tool     one run calling a tool the policy's scope
                                                forbids (checked against the real detector)
``provider_outage``       infrastructure        several runs whose model calls answer 503, two
                          (provider_5xx)        attempts each, within one minute
``context_spiral``        context_growth        one run whose prompt grows 1.2 × the growth
                          (spiral)              factor per call, ``steps + 2`` calls
========================  ====================  ===============================================

Every span's resource carries ``agentwatch.drill = <drill id>`` (and ``agentwatch.drill.id``, the
same id): the collector honours it only for a drill an admin started, in the span's tenant and
service (``collector.normalize.RunningDrills``), so no exporter can mark real spans as a drill's.
Sessions are ``<drill id>-<n>``. The service defaults to ``gameday-<drill id>``: a service of its
own keeps the drill out of the detectors' per-service windows and baselines (a drill's 503s never
add to a real service's failure rate, and earlier drills never become a later drill's baseline).

An out-of-scope drill needs a scope to break: with no ``allowed_tools`` or ``tool_constraints``
for the agent, nothing is out of scope and ``ScenarioError`` says so.

>>> from analyzer.policy import AgentPolicy
>>> runs = plan("loop", "dr-0123456789ab", "gameday-x", "support", AgentPolicy())
>>> [s["name"] for s in runs[0]["spans"]][:2]
['chat gpt-4o-mini', 'execute_tool lookup_order']
>>> plan("out_of_scope", "dr-0123456789ab", "svc", "support", AgentPolicy())
Traceback (most recent call last):
...
analyzer.gameday.scenarios.ScenarioError: agent 'support' of service 'svc' declares no scope in the policy (allowed_tools or tool_constraints): nothing it calls is out of scope, so out_of_scope_tool cannot fire; declare its scope, or drill another scenario
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING

from analyzer.detectors.out_of_scope_tool import OutOfScopeToolDetector
from analyzer.session import SessionTable
from analyzer.step import Step
from collector.pricing import PriceTable

if TYPE_CHECKING:
    from analyzer.policy import AgentPolicy

#: scenario -> the detector that must fire (the score's incident is that detector's)
SCENARIOS = {
    "loop": "loop",
    "cost_spiral": "cost_runaway",
    "out_of_scope": "out_of_scope_tool",
    "provider_outage": "infrastructure",
    "context_spiral": "context_growth",
}
DRILL_ID = re.compile(r"^dr-[0-9a-f]{12}$")
DRILL_ATTRIBUTE = "agentwatch.drill"
DRILL_ID_ATTRIBUTE = "agentwatch.drill.id"
DRILL_USER = "gameday-drill-user"
_MAX_CALLS = 400  # a plan larger than this is a policy no drill should try to reach

_SMALL_MODEL, _MODEL = "gpt-4o-mini", "gpt-4o"
_MODEL_WINDOW = 128_000  # gpt-4o's: a cost spiral's calls stay under 0.8 of it (no context alarm)


class ScenarioError(ValueError):
    """The scenario cannot make its detector fire for this agent (the message says why)."""


def default_service(drill_id: str) -> str:
    return f"gameday-{drill_id}"


def session_of(drill_id: str, run: int) -> str:
    return f"{drill_id}-{run}"


def resource_of(drill_id: str, service: str) -> dict:
    """The resource attributes of every span of the drill."""
    return {"service.name": service, DRILL_ATTRIBUTE: drill_id, DRILL_ID_ATTRIBUTE: drill_id}


def plan(
    scenario: str,
    drill_id: str,
    service: str,
    agent: str,
    policy: AgentPolicy,
    prices: PriceTable | None = None,
) -> list[dict]:
    """The drill's runs: ``[{"session", "user", "agent", "spans": [{"name", "attributes",
    "error"}]}]``, each run a root ``invoke_agent`` span with ``spans`` as its children, in order
    (``error``: the status message of a failed call, else None)."""
    if scenario not in SCENARIOS:
        raise ScenarioError(f"scenario must be one of {', '.join(SCENARIOS)}, not {scenario!r}")
    build = {
        "loop": _loop,
        "cost_spiral": _cost_spiral,
        "out_of_scope": _out_of_scope,
        "provider_outage": _provider_outage,
        "context_spiral": _context_spiral,
    }[scenario]
    runs = build(service, agent, policy, prices or PriceTable())
    return [
        {"session": session_of(drill_id, n), "user": DRILL_USER, "agent": agent, "spans": spans}
        for n, spans in enumerate(runs, start=1)
    ]


def _chat(input_tokens: int, output_tokens: int, model: str = _SMALL_MODEL, error=None) -> dict:
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.provider.name": "openai",
    }
    if error is None:
        attributes["gen_ai.usage.input_tokens"] = input_tokens
        attributes["gen_ai.usage.output_tokens"] = output_tokens
        attributes["gen_ai.response.finish_reasons"] = ["tool_calls"]
    else:
        attributes["error.type"] = "openai.InternalServerError"
        attributes["http.response.status_code"] = 503
    return {"name": f"chat {model}", "attributes": attributes, "error": error}


def _tool(name: str, arguments: dict, result: str = "") -> dict:
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.arguments": json.dumps(arguments, sort_keys=True),
    }
    if result:
        attributes["gen_ai.tool.call.result"] = result
    return {"name": f"execute_tool {name}", "attributes": attributes, "error": None}


def _loop(service, agent, policy: AgentPolicy, prices) -> list[list[dict]]:
    """The agent asks for the same order again and again: the answer never satisfies it."""
    repeats = int(policy.threshold("loop", "repeats", 3))
    spans = []
    for n in range(repeats + 3):
        spans.append(_chat(1_200 + 150 * n, 60))
        spans.append(_tool("lookup_order", {"order_id": 4711}, '{"status": "pending"}'))
    return [spans]


def _cost_spiral(service, agent, policy: AgentPolicy, prices: PriceTable) -> list[list[dict]]:
    """Large prompts sent call after call (a retrieval stuffing the whole corpus each time)."""
    target = (
        policy.session_cost_usd
        if policy.session_cost_usd is not None
        else policy.threshold("cost_runaway", "default_session_cost_usd", 5.0)
    ) * 1.5
    input_tokens, output_tokens = int(_MODEL_WINDOW * 0.7), 1_500
    price = prices.lookup(_MODEL)
    per_call = price.cost_usd(input_tokens, output_tokens, 0, 0) if price else 0.0
    if per_call <= 0:
        raise ScenarioError(f"no price for {_MODEL}: a cost spiral costs nothing to this collector")
    calls = math.ceil(target / per_call) + 1
    if calls > _MAX_CALLS:
        raise ScenarioError(
            f"the cost limit for {agent!r} needs {calls} model calls of ${per_call:.2f}; a drill"
            f" sends at most {_MAX_CALLS}"
        )
    spans = []
    for n in range(calls):
        spans.append(_chat(input_tokens, output_tokens, _MODEL))
        spans.append(_tool("search_docs", {"query": f"refund policy section {n}"}, "[...]"))
    return [spans]


def _out_of_scope(service, agent, policy: AgentPolicy, prices) -> list[list[dict]]:
    """The agent reaches for something its scope forbids; the first candidate the real detector
    flags for this policy is sent."""
    call = _forbidden_call(service, agent, policy)
    if call is None:
        raise ScenarioError(
            f"agent {agent!r} of service {service!r} declares no scope in the policy"
            " (allowed_tools or tool_constraints): nothing it calls is out of scope, so"
            " out_of_scope_tool cannot fire; declare its scope, or drill another scenario"
        )
    tool, arguments = call
    return [[_chat(1_500, 80), _tool(tool, arguments), _chat(1_800, 40)]]


def _forbidden_call(service: str, agent: str, policy: AgentPolicy) -> tuple[str, dict] | None:
    candidates: list[tuple[str, dict]] = [
        ("gameday_transfer_funds", {"amount_usd": 5000, "to_account": "drill-0000"})
    ]
    for pattern in policy.tool_constraints:
        tool = pattern.replace("*", "drill").replace("?", "x")
        candidates += [
            (tool, {"path": "/etc/shadow"}),
            (tool, {"url": "https://exfiltrate.gameday.invalid/upload"}),
            (tool, {"query": "DROP TABLE orders"}),
        ]
    sessions = SessionTable(policy_for=lambda s, a: policy)
    for n, (tool, arguments) in enumerate(candidates):
        step = Step(
            n + 1, 1, "drill", service, agent, f"probe-{n}", "", "t", "s", "", "tool",
            tool=tool, tool_args=json.dumps(arguments, sort_keys=True),
        )  # fmt: skip
        if OutOfScopeToolDetector().observe(step, sessions.for_step(step, n + 1), n + 1):
            return tool, arguments
    return None


def _provider_outage(service, agent, policy: AgentPolicy, prices) -> list[list[dict]]:
    """The model provider answers 503 to every run for a minute; each call is retried once."""
    failures = int(policy.threshold("infrastructure", "min_failures", 5))
    sessions = int(policy.threshold("infrastructure", "min_sessions", 2))
    runs = max(sessions, math.ceil(failures / 2)) + 2
    error = "Error code: 503 - {'error': {'message': 'The server is overloaded or not ready yet.'}}"
    return [[_chat(0, 0, _MODEL, error), _chat(0, 0, _MODEL, error)] for _ in range(runs)]


def _context_spiral(service, agent, policy: AgentPolicy, prices) -> list[list[dict]]:
    """The history is re-sent into itself: each prompt a multiple of the one before."""
    factor = policy.threshold("context_growth", "growth_factor", 2.0) * 1.2
    steps = int(policy.threshold("context_growth", "steps", 3))
    floor = policy.threshold("context_growth", "min_input_tokens", 8_000)
    first = max(1_500.0, 1.2 * floor / factor**steps)
    return [[_chat(int(first * factor**n) + 1, 300, _MODEL) for n in range(steps + 2)]]
