"""The behavioural SLA per agent: what each detector compares a session against.

This module holds the resolved, typed form (``AgentPolicy``) that detectors read from
``session.policy``, and the policy file that resolves it: ``load_policy(path) -> Policy``, then
``Policy.for_agent(service, agent) -> AgentPolicy``. The file (``deploy/policy.example.yaml``)::

    defaults: {thresholds: {loop: {repeats: 3}}}
    agents:                      # first match wins; globs on service and agent name
      - match: {service: "support-*", agent: "*"}
        allowed_tools: [search_docs, get_weather, lookup_order]
        budgets: {session_cost_usd: 1.0}
        severity: {token_ratio: SEV2}
        actions: {SEV1: pause_session}

Resolution: the first rule of ``agents`` whose ``match`` globs (fnmatch, case-sensitive; an
omitted glob is ``*``) match the session's service and agent names, with ``defaults`` under it:
lists and scalars in the rule replace the defaults' (``allowed_tools``, ``builtin_tools``, each
budget); mappings merge key by key (``thresholds`` per detector and key, ``severity``, ``actions``,
``tool_constraints`` per tool). No rule matching: ``defaults`` alone (rule name ``defaults``).

>>> policy = parse_policy({"defaults": {"thresholds": {"loop": {"repeats": 3, "window": 20}}},
...     "agents": [{"match": {"service": "support-*"}, "thresholds": {"loop": {"repeats": 1}}}]})
>>> p = policy.for_agent("support-eu", "triage")
>>> p.rule, p.threshold("loop", "repeats", 9), p.threshold("loop", "window", 9)
('agents[0]', 1, 20)
>>> policy.for_agent("billing", "x").rule
'defaults'

"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Annotated, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from analyzer.detectors import REGISTRY
from analyzer.detectors.base import DetectorThresholds

#: Tools that frameworks call on their own (not the agent's choice): never out of scope.
BUILTIN_TOOLS = ("final_answer", "transfer_to_*", "handoff_to_*", "think")


@dataclass(frozen=True, slots=True)
class ToolConstraint:
    """Argument limits of one allowed tool; empty means no limit of that kind."""

    path_prefixes: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    sql_verbs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    rule: str = "default"  # which policy rule matched (for incidents and audit)
    allowed_tools: tuple[str, ...] | None = None  # globs; None: no scope declared
    tool_constraints: Mapping[str, ToolConstraint] = field(
        default_factory=lambda: MappingProxyType({})
    )
    consequential_tools: tuple[str, ...] = (
        "send_*",
        "delete_*",
        "pay_*",
        "refund_*",
        "write_*",
        "transfer_*",
    )
    builtin_tools: tuple[str, ...] = BUILTIN_TOOLS
    session_cost_usd: float | None = None
    session_tokens: int | None = None
    thresholds: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    severity: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # detector -> SEV
    actions: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # SEV -> action
    # Tool circuit breaker: this many sessions with a finding on one tool within the window open
    # that tool's circuit (0: never), for the agent, the service or everyone (``scope``).
    tool_circuit_sessions: int = 3
    tool_circuit_window_s: float = 600.0
    tool_circuit_scope: str = "agent"
    # Escalation to SEV1 when a signature spreads: findings from this many sessions or users
    # within the window, counted in ClickHouse across every collector (0: that count never does).
    escalation_sessions: int = 10
    escalation_users: int = 10
    escalation_window_s: float = 3600.0

    def action_for(self, detector: str, severity: str) -> str:
        """The containment action for a finding: the detector's entry wins over its SEV's."""
        return self.actions.get(detector) or self.actions.get(severity) or "none"

    def threshold(self, detector: str, key: str, default: float) -> float:
        return self.thresholds.get(detector, _NO_THRESHOLDS).get(key, default)

    def is_consequential(self, tool: str) -> bool:
        return matches_any(self.consequential_tools, tool)

    def is_builtin(self, tool: str) -> bool:
        return matches_any(self.builtin_tools, tool)

    def allows(self, tool: str) -> bool:
        """True when no scope is declared, or the tool matches an allowed glob or is built in."""
        if self.allowed_tools is None or self.is_builtin(tool):
            return True
        return matches_any(self.allowed_tools, tool)


_NO_THRESHOLDS: Mapping[str, float] = MappingProxyType({})


@lru_cache(maxsize=8192)
def matches_any(patterns: tuple[str, ...], name: str) -> bool:
    """Whether ``name`` matches one of the globs (cached: tools and rules are few, calls many)."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


DEFAULT_POLICY = AgentPolicy()


# --- the policy file ----------------------------------------------------------------------------
#
# The pydantic models below are the single source of truth for the file's shape: ``load_policy``
# validates with them, and ``schemas/policy.schema.json`` is generated from them
# (``agentwatch policy schema > schemas/policy.schema.json``; a test checks the two agree). The
# models are strict (no "3" for 3, no true for 1), so that what the schema accepts and what the
# loader accepts are the same. The sections keyed by detector (``thresholds``, ``severity``,
# ``actions``) are generated from the detector registry (``analyzer.detectors.REGISTRY``): a
# detector's thresholds model gives its ``thresholds.<name>`` keys, defaults and bounds.

#: Cached (service, agent) resolutions per Policy; beyond it the least recently used is dropped.
RESOLVE_CACHE_SIZE = 4096

Severity = Literal["SEV1", "SEV2", "SEV3"]
Action = Literal[
    "pause_session", "freeze_session", "quarantine_user", "open_tool_circuit", "kill_agent", "none"
]
DETECTORS: tuple[str, ...] = tuple(REGISTRY)
SEVERITIES: tuple[str, ...] = get_args(Severity)
ACTIONS: tuple[str, ...] = get_args(Action)


class PolicyError(ValueError):
    """The policy file cannot be used: which file, which key, what was expected."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    #: what an unknown key of this mapping is, in error messages
    what: ClassVar[str] = "key"


class _Thresholds(_Model):
    what: ClassVar[str] = "threshold"


class _ByDetector(_Model):
    what: ClassVar[str] = "detector name"


class _BySeverityOrDetector(_Model):
    what: ClassVar[str] = "severity (SEV1..SEV3) or detector name"


def _num(description: str, **bounds):
    return Field(default=None, description=description, **bounds)


def _overrides(model: type[DetectorThresholds]) -> type[_Thresholds]:
    """A detector's thresholds model as a policy file sets it: the same keys, types, bounds and
    descriptions (with the default), every key optional (unset: the detector's default)."""
    fields: dict = {}
    for key, info in model.model_fields.items():
        annotation = info.annotation | None
        if info.metadata:  # the bounds (ge, gt, le), as on ``X | None = Field(None, ge=1)``
            annotation = Annotated[(annotation, *info.metadata)]
        note = "" if info.default is None else f" (default {info.default!r})"
        fields[key] = (annotation, Field(None, description=f"{info.description or key}{note}"))
    return create_model(
        model.__name__, __base__=_Thresholds, __doc__=model.__doc__, __module__=__name__, **fields
    )


Thresholds = create_model(
    "Thresholds",
    __base__=_ByDetector,
    __module__=__name__,
    **{name: (_overrides(cls.thresholds_model) | None, None) for name, cls in REGISTRY.items()},
)

SeverityOverrides = create_model(
    "SeverityOverrides",
    __base__=_ByDetector,
    __doc__="Detector name -> the severity its findings get instead of the detector's own.",
    __module__=__name__,
    **{name: (Severity | None, None) for name in DETECTORS},
)

Actions = create_model(
    "Actions",
    __base__=_BySeverityOrDetector,
    __doc__="Severity or detector name -> containment action"
    " (a detector's entry wins over its SEV's).",
    __module__=__name__,
    **{key: (Action | None, None) for key in SEVERITIES + DETECTORS},
)


class Budgets(_Model):
    session_cost_usd: float | None = _num("a session costing more is a cost incident", ge=0)
    session_tokens: int | None = _num("a session using more tokens is a cost incident", ge=0)


class ToolConstraintSpec(_Model):
    path_prefixes: list[str] | None = Field(
        default=None, description="path arguments must lie under one of these"
    )
    hosts: list[str] | None = Field(
        default=None, description="URL/host arguments must name one of these (*.example.com)"
    )
    sql_verbs: list[str] | None = Field(
        default=None, description="SQL arguments may use only these statements (SELECT)"
    )


class ToolCircuit(_Model):
    sessions: int | None = _num(
        "sessions with a finding on one tool within the window that open its circuit (3; 0: off)",
        ge=0,
    )
    window_s: float | None = _num("the window in seconds (600)", gt=0)
    scope: Literal["agent", "service", "global"] | None = Field(
        default=None, description="whom the open circuit stops: this agent (default), service, all"
    )


class Escalation(_Model):
    sessions: int | None = _num(
        "sessions with the same finding (all collectors, within the window) that make it SEV1 (10; 0: off)",
        ge=0,
    )
    users: int | None = _num("users likewise (10; 0: off)", ge=0)
    window_s: float | None = _num("the window in seconds (3600)", gt=0)


class Match(_Model):
    service: str = Field(default="*", description="glob on the service name (service.name)")
    agent: str = Field(default="*", description="glob on the agent name")


class RuleBody(_Model):
    allowed_tools: list[str] | None = Field(
        default=None, description="globs; a tool outside them is out of scope"
    )
    tool_constraints: dict[str, ToolConstraintSpec] | None = Field(
        default=None, description="tool name or glob -> argument limits"
    )
    consequential_tools: list[str] | None = Field(
        default=None, description="globs of tools whose misuse is SEV1 (send_*, delete_*)"
    )
    builtin_tools: list[str] | None = Field(
        default=None, description="globs of framework tools never out of scope (replaces the list)"
    )
    budgets: Budgets | None = None
    thresholds: Thresholds | None = None
    severity: SeverityOverrides | None = None
    actions: Actions | None = None
    tool_circuit: ToolCircuit | None = None
    escalation: Escalation | None = None


class AgentRule(RuleBody):
    name: str | None = Field(default=None, description="shown in incidents; default agents[i]")
    match: Match


class PolicyFile(_Model):
    """The policy file: ``defaults`` under every rule, then ``agents`` (first match wins)."""

    version: Literal[1] = 1
    defaults: RuleBody | None = None
    agents: list[AgentRule] = Field(default_factory=list)


def policy_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of the policy file, generated from the models."""
    schema = PolicyFile.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://agentwatch.dev/schemas/policy.schema.json",
        **schema,
        "title": "agentwatch policy file",
    }


class Policy:
    """A loaded policy file. ``for_agent(service, agent)`` resolves (and caches) an AgentPolicy."""

    def __init__(self, spec: PolicyFile, source: str = "<policy>") -> None:
        self.spec = spec
        self.source = source
        self.for_agent = lru_cache(maxsize=RESOLVE_CACHE_SIZE)(self._resolve)

    def rule_name(self, index: int) -> str:
        return self.spec.agents[index].name or f"agents[{index}]"

    def match_index(self, service: str, agent: str) -> int | None:
        """Index of the first rule whose globs match, or None."""
        for i, rule in enumerate(self.spec.agents):
            if fnmatchcase(service or "", rule.match.service) and fnmatchcase(
                agent or "", rule.match.agent
            ):
                return i
        return None

    def _resolve(self, service: str, agent: str) -> AgentPolicy:
        index = self.match_index(service, agent)
        layers = [self.spec.defaults] if self.spec.defaults is not None else []
        if index is not None:
            layers.append(self.spec.agents[index])
            name = self.rule_name(index)
        else:
            name = "defaults"
        return _build(name, layers)


def _build(name: str, layers: list[RuleBody]) -> AgentPolicy:
    """Later layers win: scalars and lists replace; mappings merge key by key."""
    fields: dict = {"rule": name}
    thresholds: dict[str, dict[str, float]] = {}
    severity: dict[str, str] = {}
    actions: dict[str, str] = {}
    constraints: dict[str, ToolConstraint] = {}
    for layer in layers:
        for key in ("allowed_tools", "consequential_tools", "builtin_tools"):
            value = getattr(layer, key)
            if value is not None:
                fields[key] = tuple(value)
        if layer.budgets is not None:
            fields.update(layer.budgets.model_dump(exclude_none=True))
        if layer.thresholds is not None:
            for detector, values in layer.thresholds:
                if values is not None:
                    thresholds.setdefault(detector, {}).update(values.model_dump(exclude_none=True))
        if layer.severity is not None:
            severity.update(layer.severity.model_dump(exclude_none=True))
        if layer.actions is not None:
            actions.update(layer.actions.model_dump(exclude_none=True))
        for name in ("tool_circuit", "escalation"):
            section = getattr(layer, name)
            if section is not None:
                for key, value in section.model_dump(exclude_none=True).items():
                    fields[f"{name}_{key}"] = value
        for tool, spec in (layer.tool_constraints or {}).items():
            constraints[tool] = ToolConstraint(  # a rule's entry replaces the defaults' entry
                tuple(spec.path_prefixes or ()),
                tuple(spec.hosts or ()),
                tuple(spec.sql_verbs or ()),
            )
    return AgentPolicy(
        **fields,
        tool_constraints=MappingProxyType(constraints),
        thresholds=MappingProxyType({d: MappingProxyType(v) for d, v in thresholds.items() if v}),
        severity=MappingProxyType(severity),
        actions=MappingProxyType(actions),
    )


def load_policy(path: str | Path) -> Policy:
    """Read and validate a YAML policy file; ``PolicyError`` names the file, key and expectation."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise PolicyError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    return parse_policy(data, str(path))


def parse_policy(data, source: str = "<policy>") -> Policy:
    """Validate already-parsed YAML/JSON data (``source`` names it in errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping with 'defaults' and 'agents' at the top")
    try:
        spec = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise PolicyError("\n".join(_describe(source, error) for error in exc.errors())) from None
    return Policy(spec, source)


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _unwrap(annotation):
    """``X | None`` -> ``X``; anything else as it is."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


_COMPARISONS = (
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)


def _describe(source: str, error: dict) -> str:
    loc = tuple(error["loc"])
    # list[X] / dict[str, X]: pydantic puts the index or key in loc; walk through them
    parent = _walk(loc[:-1]) if loc else None
    kind, msg = error["type"], error["msg"]
    if kind == "value_error":  # our own check's words, without pydantic's "Value error, "
        msg = str(error.get("ctx", {}).get("error", msg))
    if kind == "extra_forbidden" and loc:
        key = loc[-1]
        what = getattr(parent, "what", "key") if parent else "key"
        known = ", ".join(parent.model_fields) if parent else ""
        expected = f" (expected one of: {known})" if known else " (this mapping takes no keys)"
        return f"{source}: {_key_path(loc[:-1])}: unknown {what} {key!r}{expected}"
    if kind == "missing":
        return f"{source}: {_key_path(loc)}: required key missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    msg = msg.replace("Input should be", "expected")
    for words, sign in _COMPARISONS:
        msg = msg.replace(words, sign)
    return f"{source}: {_key_path(loc)}: {msg}{shown}"


def _walk(loc: tuple):
    """The model class at ``loc``, stepping through list indexes and dict keys."""
    current: object = PolicyFile
    for part in loc:
        current = _unwrap(current)
        origin = get_origin(current)
        if origin is list or origin is dict:
            current = _unwrap(get_args(current)[-1])
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(str(part))
            if field_info is None:
                return None
            current = field_info.annotation
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None
