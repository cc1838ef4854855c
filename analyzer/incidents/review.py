"""The post-incident review: five questions answered from the data, and the guardrail change that
would have stopped it, as a diff of the policy file in use.

Pure: it is handed the incident, the steps of its run, the blast radius and the policy (the
resolved ``AgentPolicy`` and the file's text), and returns a ``Review``; it reads no store and no
clock. ``agentwatch incidents review ID``, ``GET /v1/incidents/{id}/review`` and the console's
``/incidents/{id}/review`` page all render what ``review(facts)`` returns.

The suggestion is one change, chosen by what fired and what the policy already did:

- a tool called out of scope that is not consequential: add it to ``consequential_tools`` (so
  the next call is SEV1, which ``actions: {SEV1: ...}`` contains);
- cost or tokens: a session budget at what the run had spent when it went off the rails;
- no containment action for the finding: one (``pause_session``; ``open_tool_circuit`` for an
  infrastructure failure of a tool);
- an action already in force for a loop: fire one repeat earlier.

It is written as a new first rule under ``agents`` that matches this service and agent exactly
and carries the rule they matched before plus the change: other agents are untouched, and the
diff only adds lines to the file, comments and all.
"""

from __future__ import annotations

import difflib
import glob
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from analyzer.detectors import REGISTRY
from analyzer.policy import AgentPolicy, PolicyError, parse_policy

QUESTIONS = (
    "What did the agent do?",
    "Why did it do it?",
    "Why didn't our guardrails catch it?",
    "What was the blast radius?",
    "Which guardrail change prevents a recurrence?",
)
RECENT_TOOL_CALLS = 5
_AGENTS_KEY = re.compile(r"^agents:\s*(#.*)?$")


@dataclass(frozen=True)
class Facts:
    """What the review is written from (the caller reads it; nothing here reads a store)."""

    incident: Mapping  # a row of incidents_current for people (evidence decoded, ISO times)
    steps: Sequence[Mapping]  # the run's steps in time order (``console.data`` rows)
    total_steps: int
    sessions: int
    users: int
    running: int
    policy: AgentPolicy  # what applied to the incident's agent
    policy_text: str | None = None  # the policy file in use; None: none (built-in defaults)
    policy_path: str = ""
    contained: Sequence[str] = ()  # details of the incident's 'contained' events
    first_step: int = 1  # the number in the run of ``steps[0]`` (a long run is a window)


@dataclass(frozen=True)
class Suggestion:
    summary: str
    change: dict  # the keys the new rule sets beyond the rule it copies
    rule: dict  # the new rule
    path: str
    before: str  # the policy file's text ('' when there is none)
    after: str
    diff: str = field(repr=False, default="")


@dataclass(frozen=True)
class Review:
    incident_id: str
    answers: tuple[tuple[str, tuple[str, ...]], ...]  # (question, lines)
    suggestion: Suggestion | None

    def as_dict(self) -> dict:
        s = self.suggestion
        return {
            "incident_id": self.incident_id,
            "questions": [{"question": q, "answer": list(lines)} for q, lines in self.answers],
            "suggestion": None
            if s is None
            else {"summary": s.summary, "change": s.change, "policy_file": s.path,
                  "diff": s.diff, "policy": s.after},
        }  # fmt: skip

    def as_text(self) -> str:
        out = [f"Post-incident review of {self.incident_id}", ""]
        for number, (question, lines) in enumerate(self.answers, 1):
            out.append(f"{number}. {question}")
            out += [f"   {line}" for line in lines]
            out.append("")
        if self.suggestion is not None:
            out.append("Suggested policy change:")
            out.append(self.suggestion.diff.rstrip("\n"))
        return "\n".join(out) + "\n"


def review(facts: Facts) -> Review:
    i = facts.incident
    why = _why(i)
    change = (
        "No change suggested: the policy already contained it as configured; consider whether"
        " the detector's thresholds fit this agent."
    )
    try:
        suggestion = suggest(facts)
    except (PolicyError, yaml.YAMLError) as exc:  # the file changed since the collector read it
        suggestion = None
        change = f"No suggestion: {facts.policy_path} does not load now: {str(exc)[:300]}"
    answers = (
        (QUESTIONS[0], _what(facts)),
        (QUESTIONS[1], _why_lines(why, i)),
        (QUESTIONS[2], _guardrails(facts, why)),
        (QUESTIONS[3], _blast(facts)),
        (QUESTIONS[4], (suggestion.summary if suggestion else change,)),
    )
    return Review(i["incident_id"], answers, suggestion)


def _why(incident: Mapping) -> dict:
    evidence = incident.get("evidence")
    first = evidence[0] if isinstance(evidence, list) and evidence else None
    return first if isinstance(first, dict) and "why" in first else {}


def _flagged(facts: Facts) -> int | None:
    span = facts.incident.get("span_id")
    return next((n for n, s in enumerate(facts.steps) if s.get("SpanId") == span), None)


def _call(step: Mapping) -> str:
    args = " ".join(str(step.get("ToolArgs") or "").split())
    failed = step.get("StatusCode") == "Error" or step.get("ErrorType")
    outcome = (step.get("ErrorType") or step.get("StatusMessage") or "error") if failed else "ok"
    args = args if len(args) <= 120 else args[:119] + "…"
    return f"{step.get('ToolName') or step.get('SpanName')}({args}) -> {outcome}"


def _what(facts: Facts) -> tuple[str, ...]:
    i = facts.incident
    lines = [str(i.get("summary") or i.get("title") or "")]
    where = f"session {i['session_id']}" if i.get("session_id") else f"trace {i.get('trace_id')}"
    lines.append(
        f"{i.get('service')}/{i.get('agent') or '-'}, {where}, {facts.total_steps} step(s)."
    )
    at = _flagged(facts)
    before = facts.steps if at is None else facts.steps[:at]
    tools = [s for s in before if s.get("StepKind") == "tool"][-RECENT_TOOL_CALLS:]
    if tools:
        lines.append(f"The last {len(tools)} tool call(s) before it went off the rails:")
        lines += [f"  {_call(s)}" for s in tools]
    if at is not None:
        number = at + facts.first_step
        lines.append(f"Off the rails at step {number}: {_call(facts.steps[at])}")
    return tuple(lines)


def _why_lines(why: Mapping, incident: Mapping) -> tuple[str, ...]:
    if not why:
        return (f"{incident.get('detector')}/{incident.get('kind')}: {incident.get('title')}",)
    lines = [str(why["why"]), f"rule {why.get('rule')}: observed {why.get('observed')},"
             f" threshold {why.get('threshold')}"]  # fmt: skip
    if why.get("baseline") is not None:
        lines.append(f"the agent's baseline: {why['baseline']}")
    return tuple(lines)


def _guardrails(facts: Facts, why: Mapping) -> tuple[str, ...]:
    i, p = facts.incident, facts.policy
    source = f"policy rule {p.rule} of {facts.policy_path}" if facts.policy_text is not None else (
        "no policy file: the built-in defaults")  # fmt: skip
    lines = [f"What applied: {source}."]
    tool = i.get("tool") or ""
    if tool:
        scope = "no tool scope declared" if p.allowed_tools is None else (
            "in scope" if p.allows(tool) else "OUT of the allowed tools")  # fmt: skip
        lines.append(
            f"Tool {tool}: {scope}; "
            + ("consequential." if p.is_consequential(tool) else "not consequential.")
        )
    action = p.action_for(i.get("detector", ""), i.get("severity", ""))
    if action == "none":
        lines.append(f"No containment action for {i.get('detector')} or {i.get('severity')}:"
                     " detection paged, nothing stopped the run automatically.")  # fmt: skip
    else:
        lines.append(f"The policy's action for it: {action}.")
    budgets = [
        f"session_cost_usd {p.session_cost_usd}" if p.session_cost_usd is not None else "",
        f"session_tokens {p.session_tokens}" if p.session_tokens is not None else "",
    ]
    lines.append("Budgets: " + (", ".join(b for b in budgets if b) or "none set") + ".")
    if facts.contained:
        lines += [f"Contained: {c}" for c in facts.contained]
    else:
        lines.append("Nobody contained it (no 'contained' event on the timeline).")
    return tuple(lines)


def _blast(facts: Facts) -> tuple[str, ...]:
    i = facts.incident
    return (
        f"{facts.sessions} session(s), {facts.users} user(s); {facts.running} still running.",
        f"Seen {i.get('occurrences')} time(s) from {_utc(i.get('first_seen'))} to"
        f" {_utc(i.get('last_seen'))}.",
    )


def _utc(iso) -> str:
    """'2026-12-07T05:27:02.657134311Z' -> '2026-12-07 05:27:02 UTC'."""
    return f"{str(iso)[:19].replace('T', ' ')} UTC" if iso else "?"


# --- the suggestion ----------------------------------------------------------------------------


def _default(detector: str, key: str):
    return REGISTRY[detector].thresholds_model.model_fields[key].default


def _spent(facts: Facts) -> tuple[int, float]:
    """Tokens and cost of the run up to and including the off-rails step."""
    at = _flagged(facts)
    steps = facts.steps if at is None else facts.steps[: at + 1]
    tokens = sum(int(s.get("InputTokens") or 0) + int(s.get("OutputTokens") or 0) for s in steps)
    return tokens, sum(float(s.get("CostUsd") or 0) for s in steps)


def change_for(facts: Facts) -> tuple[str, dict] | None:
    """(why, the policy keys to set) for this incident, or None when nothing would help.

    >>> loop = Facts({"incident_id": "inc-1", "detector": "loop", "severity": "SEV2"},
    ...              [], 0, 1, 1, 0, AgentPolicy())
    >>> change_for(loop)[1]
    {'actions': {'loop': 'pause_session'}}
    >>> from types import MappingProxyType as M
    >>> change_for(Facts(loop.incident, [], 0, 1, 1, 0,
    ...     AgentPolicy(actions=M({"loop": "pause_session"}))))[1]
    {'thresholds': {'loop': {'repeats': 2}}}
    """
    i, p = facts.incident, facts.policy
    detector, tool, severity = i.get("detector", ""), i.get("tool") or "", i.get("severity", "")
    if detector == "out_of_scope_tool" and tool and not p.is_consequential(tool):
        change: dict = {"consequential_tools": [*p.consequential_tools, tool]}
        action = p.action_for(detector, "SEV1")
        if action == "none":
            action = "pause_session"
            change["actions"] = {"SEV1": action}
        return (f"Add {tool} to consequential_tools: its next call out of scope is SEV1, and"
                f" {action} follows.", change)  # fmt: skip
    tokens, cost = _spent(facts)
    if detector == "cost_runaway" and p.session_cost_usd is None and cost > 0:
        budget = round(cost, 4)
        return (f"A session budget of ${budget}: what this run had spent when it went off the"
                " rails.", {"budgets": {"session_cost_usd": budget}})  # fmt: skip
    if detector in ("context_growth", "token_ratio") and p.session_tokens is None and tokens > 0:
        return (f"A session budget of {tokens} tokens: what this run had used when it went off"
                " the rails.", {"budgets": {"session_tokens": tokens}})  # fmt: skip
    if p.action_for(detector, severity) == "none":
        action = "open_tool_circuit" if detector == "infrastructure" and tool else "pause_session"
        return (
            f"Contain {detector} automatically: actions {{{detector}: {action}}} (it paged, and"
            " nothing stopped the run by itself).",
            {"actions": {detector: action}},
        )
    if detector == "loop":
        repeats = int(p.threshold("loop", "repeats", _default("loop", "repeats")))
        if repeats > 2:
            return (f"Fire one repeat earlier: thresholds.loop.repeats {repeats} -> {repeats - 1}.",
                    {"thresholds": {"loop": {"repeats": repeats - 1}}})  # fmt: skip
    return None


def suggest(facts: Facts) -> Suggestion | None:
    """The change as a new first rule of the policy file in use (or of a new file), and the diff.

    The rule copies the body of the rule the agent matched (so nothing else changes for it) and
    sets ``change`` over it (mappings merge, lists and scalars replace).
    """
    found = change_for(facts)
    if found is None:
        return None
    summary, change = found
    i = facts.incident
    data = yaml.safe_load(facts.policy_text or "") or {}
    body: dict = {}
    if data:
        index = parse_policy(data, facts.policy_path).match_index(i["service"], i.get("agent", ""))
        if index is not None:
            body = {k: v for k, v in data["agents"][index].items() if k not in ("name", "match")}
    agent = i.get("agent") or ""
    rule = {
        "name": f"{i['service']}/{agent or '*'} after {i['incident_id']}",
        "match": {"service": glob.escape(i["service"]), "agent": glob.escape(agent) or "*"},
        **_merged(body, change),
    }
    path = facts.policy_path or "policy.yaml"
    before = facts.policy_text or ""
    after = _with_first_rule(before, rule, f"{i['incident_id']}: {summary}")
    parse_policy(yaml.safe_load(after), path)  # a suggestion that does not load is a bug here
    diff = "".join(difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=f"a/{path.lstrip('/')}" if facts.policy_text is not None else "/dev/null",
        tofile=f"b/{path.lstrip('/')}",
    ))  # fmt: skip
    return Suggestion(summary, change, rule, path, before, after, diff)


def _merged(base: dict, change: dict) -> dict:
    """``change`` over ``base``: mappings merge key by key, anything else replaces.

    >>> _merged({"actions": {"SEV1": "pause_session"}, "budgets": {"session_tokens": 9}},
    ...         {"actions": {"loop": "pause_session"}, "allowed_tools": ["a"]})
    {'actions': {'SEV1': 'pause_session', 'loop': 'pause_session'}, 'budgets': {'session_tokens': 9}, 'allowed_tools': ['a']}
    """
    out = dict(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _with_first_rule(text: str, rule: dict, note: str) -> str:
    """``text`` with ``rule`` inserted as the first item of its top-level ``agents`` list; the
    file's other lines as they were. A file whose ``agents`` is not a block list is rewritten.

    >>> print(_with_first_rule("version: 1\\nagents:   # first match wins\\n  - match: {}\\n",
    ...     {"match": {"service": "s"}}, "why"), end="")
    version: 1
    agents:   # first match wins
      # why
      - match:
          service: s
      - match: {}
    """
    dumped = yaml.safe_dump([rule], sort_keys=False, default_flow_style=False, allow_unicode=True)
    lines = text.splitlines(keepends=True) or ["version: 1\n"]
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    at = next((n for n, line in enumerate(lines) if _AGENTS_KEY.match(line)), None)
    if at is None and not any(line.startswith("agents:") for line in lines):
        lines += ["agents:\n"]
        at = len(lines) - 1
    if at is None:  # agents: [...] in flow style: write the file again, without its comments
        data = yaml.safe_load(text) or {}
        data["agents"] = [rule, *(data.get("agents") or [])]
        return f"# {note}\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    following = next((line for line in lines[at + 1 :] if line.strip() and
                      not line.lstrip().startswith("#")), "")  # fmt: skip
    indent = len(following) - len(following.lstrip()) if following.lstrip().startswith("-") else 2
    pad = " " * indent
    added = [f"{pad}# {' '.join(note.split())}\n"]
    added += [f"{pad}{line}\n" for line in dumped.splitlines()]
    return "".join(lines[: at + 1] + added + lines[at + 1 :])
