"""Checks every registered detector passes (as river runs its generic checks over every estimator).

Parametrised over ``analyzer.detectors.REGISTRY``: a new detector is checked here without editing
this file. Each check is a plain function of the detector class (``check_*``), so that it can be
run by hand against a deliberately broken detector. They need:

- determinism: the same steps, fed twice to fresh instances, give the same findings and the same
  final state;
- bounded state: 20,000 steps over 2,000 sessions (bounded agents, models and tools, the clock
  moving on) leave the detector's pickled size flat after warm-up, and 20,000 steps of one session
  leave that session's state flat too;
- picklable findings (the detection process pickles them to the collector, ``analyzer.worker``);
- findings that explain themselves: the first evidence item is ``analyzer.finding.explain``'s
  (``why`` a sentence, ``rule``, ``threshold``, ``observed``; ``cold_start`` only as ``True``), and
  the evidence is JSON (the ``incidents`` table stores it so);
- no shared mutable state: no mutable default argument or thresholds default, no mutable class
  attribute, nothing mutable reachable from two instances at once;
- thresholds declared once: the model's defaults are what the constructor and ``limits`` use,
  a constructor keyword or a policy override reaches ``limits``, nothing reads them another way;
- a doctest example in the module or class docstring, and every doctest of the module passing.
"""

from __future__ import annotations

import copyreg
import dataclasses
import doctest
import functools
import inspect
import io
import pickle
import random
import sys
import types
from collections import deque

import orjson
import pytest
from pydantic import BaseModel

from analyzer.detectors import REGISTRY, DetectorThresholds
from analyzer.finding import WHY_KEYS
from analyzer.policy import DEFAULT_POLICY, DETECTORS, AgentPolicy, ToolConstraint, parse_policy
from analyzer.session import SessionTable
from analyzer.step import Step
from collector.conventions import STEP_KINDS
from tests.analyzer.timeline import llm, run, tool, tool_with_args

DETECTOR_CLASSES = list(REGISTRY.values())
by_name = pytest.mark.parametrize("cls", DETECTOR_CLASSES, ids=list(REGISTRY))

STEPS = 20_000
SESSIONS = 2_000
_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, range)

# --- the workload: every kind of trouble, bounded cardinality, the clock moving on --------------

_AGENTS = ("support", "billing", "triage")
_MODELS = ("gpt-4o-2024-08-06", "claude-sonnet-4-20250514")
_POLICIES = {
    "support": AgentPolicy(
        rule="support",
        allowed_tools=("search_docs", "lookup_order", "read_file", "fetch", "refund"),
        tool_constraints={"read_file": ToolConstraint(path_prefixes=("/srv/data",))},
        severity={"token_ratio": "SEV3"},
    ),
    "billing": AgentPolicy(rule="billing", session_cost_usd=3.0),
    "triage": AgentPolicy(rule="triage", thresholds={"loop": {"repeats": 2}}),
}


def _sessions() -> SessionTable:
    return SessionTable(policy_for=lambda service, agent: _POLICIES.get(agent, DEFAULT_POLICY))


def _script(kind: str, rng: random.Random, t0: float, n: int, **kw) -> list[Step]:
    """``n`` steps of one session of the given kind, a second or so apart, from ``t0``."""
    model = kw.pop("model", _MODELS[rng.randrange(len(_MODELS))])
    steps: list[Step] = []
    for j in range(n):
        t = t0 + j + rng.random() / 2
        if kind == "loop" and j < 6:
            steps.append(tool(t, "lookup_order", 42, **kw))
        elif kind == "cycle" and j < 8:
            steps.append(tool(t, ("fetch", "search_docs")[j % 2], j % 2, **kw))
        elif kind == "rejected" and j < 4:
            steps.append(tool(t, "refund", j, failed=True, http_status=400, **kw))
        elif kind == "spiral" and j < 8:
            steps.append(llm(t, int(1_000 * 2.1**j), 300, model=model, **kw))
        elif kind == "ratio" and j < 4:
            steps.append(llm(t, 30_000, 200, model=model, cost_usd=0.05, **kw))
        elif kind == "spend" and j < 4:
            steps.append(llm(t, 4_000, 800, model=model, cost_usd=2.0, **kw))
        elif kind == "scope" and j == 0:
            steps.append(tool(t, "send_email", rng.randrange(10**6), **kw))
        elif kind == "scope" and j == 1:
            steps.append(tool_with_args(t, "read_file", {"path": "/srv/data/../../etc/pwd"}, **kw))
        elif kind == "outage" and j < 6:
            steps.append(
                llm(t, 2_000, 0, model=model, status="Error", http_status=429,
                    error_type="openai.RateLimitError", **kw)
            )  # fmt: skip
        elif kind == "outage" and j == 6:
            step = tool(t, "vector_search", j, failed=True, http_status=503, **kw)
            step.kind = "retrieval"
            steps.append(step)
        elif j % 3 == 2:
            step = llm(t, rng.randrange(200, 2_000), 0, model="text-embedding-3-small", **kw)
            step.kind = "embedding"
            steps.append(step)
        elif j % 2:
            steps.append(
                llm(t, rng.randrange(2_000, 6_000), rng.randrange(400, 1_200), model=model,
                    cost_usd=0.01, **kw)
            )  # fmt: skip
        else:
            steps.append(tool(t, ("search_docs", "fetch")[j % 4 // 2], rng.randrange(10**6), **kw))
    return steps


_KINDS = ("normal",) * 6 + ("loop", "cycle", "rejected", "spiral", "ratio", "spend", "scope")


@functools.cache
def workload(sessions: int = SESSIONS, steps: int = STEPS, seed: int = 7) -> tuple[Step, ...]:
    """``steps`` steps over ``sessions`` sessions, one starting every 3 s, in time order."""
    rng = random.Random(seed)
    per_session = steps // sessions
    out: list[Step] = []
    for i in range(sessions):
        # a minute-long outage every 1,500 s: many sessions failing on one model at once
        kind = "outage" if i % 500 < 20 and i >= 100 else rng.choice(_KINDS)
        kw = {"session": f"s{i}", "agent": _AGENTS[i % 3], "tenant": ("acme", "globex")[i % 2]}
        if kind == "outage":
            kw["model"] = _MODELS[0]
        out += _script(kind, rng, i * 3.0, per_session, user=f"u{i % 97}", **kw)
    out.sort(key=lambda step: step.time_ns)
    return tuple(out)


@functools.cache
def one_long_session(steps: int = STEPS, seed: int = 11) -> tuple[Step, ...]:
    """``steps`` steps of a single session (every kind of trouble, one after the other)."""
    rng = random.Random(seed)
    out: list[Step] = []
    while len(out) < steps:
        kind = rng.choice(_KINDS + ("outage",))
        out += _script(kind, rng, len(out) * 1.0, 10, session="long", agent="support")
    return tuple(out[:steps])


def feed(detector, steps, sessions: SessionTable | None = None) -> list:
    return run(detector, steps, _sessions() if sessions is None else sessions)


def state_bytes(obj) -> bytes:
    """``obj`` pickled (policies' read-only mappings pickled as the dicts they show)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[types.MappingProxyType] = lambda proxy: (dict, (dict(proxy),))
    pickler.dump(obj)
    return buffer.getvalue()


def state_size(obj) -> int:
    return len(state_bytes(obj))


# --- the checks ---------------------------------------------------------------------------------


def check_contract(cls) -> None:
    assert REGISTRY.get(cls.name) is cls, f"{cls.__name__} is not registered as {cls.name!r}"
    assert isinstance(cls.kinds, frozenset) and cls.kinds, f"{cls.name}: kinds, a frozenset"
    assert cls.kinds <= set(STEP_KINDS), f"{cls.name}: unknown step kinds {cls.kinds}"
    assert issubclass(cls.thresholds_model, DetectorThresholds)
    assert callable(getattr(cls, "observe", None))


def check_deterministic(cls) -> None:
    steps = workload()
    first, second = cls(), cls()
    findings = feed(first, steps)
    assert findings == feed(second, steps), f"{cls.name}: other findings from the same steps"
    assert state_bytes(first) == state_bytes(second), f"{cls.name}: other state, same steps"


def check_bounded_across_sessions(cls) -> None:
    """The detector's own state stops growing once the workload's agents and models are known and
    its oldest sessions are done: doubling the steps fed may not double it."""
    detector, sessions = cls(), _sessions()
    steps, chunk = workload(), STEPS // 10
    sizes = []
    for start in range(0, len(steps), chunk):
        feed(detector, steps[start : start + chunk], sessions)
        sizes.append(state_size(detector))
    warm = sizes[2]  # after 6,000 steps (1,800 s): past every idle time of the defaults
    assert max(sizes[3:]) <= 1.5 * warm + 4096, f"{cls.name}: state grows with steps: {sizes}"


def check_bounded_within_a_session(cls) -> None:
    """One very long session: its state (and the detector's) stays flat after warm-up."""
    detector, sessions = cls(), _sessions()
    steps, chunk = one_long_session(), STEPS // 10
    sizes = []
    for start in range(0, len(steps), chunk):
        feed(detector, steps[start : start + chunk], sessions)
        last = steps[start + chunk - 1]
        session = sessions.for_step(last, last.time_ns)  # the one session, as it was fed last
        sizes.append(state_size((detector, session.detectors.get(cls.name))))
    assert max(sizes[3:]) <= 1.5 * sizes[2] + 4096, f"{cls.name}: session state grows: {sizes}"


def check_findings_picklable(cls) -> None:
    findings = feed(cls(), workload())
    for finding in findings:
        assert finding.detector == cls.name
        try:
            copy = pickle.loads(pickle.dumps(finding, pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            raise AssertionError(f"{cls.name}: a finding does not pickle: {exc!r}") from exc
        assert copy == finding, f"{cls.name}: a finding is not itself once unpickled"


def check_findings_explain_themselves(cls) -> None:
    findings = feed(cls(), workload())
    rules = set()
    for finding in findings:
        why = finding.evidence[0] if finding.evidence else {}
        assert tuple(why)[: len(WHY_KEYS)] == WHY_KEYS, (
            f"{cls.name}: the first evidence item is not explain()'s: {why!r}"
        )
        assert isinstance(why["why"], str) and len(why["why"].split()) >= 4, (
            f"{cls.name}: 'why' is not a sentence: {why['why']!r}"
        )
        assert why["rule"] and why["threshold"] is not None and why["observed"] is not None
        assert why.get("cold_start", True) is True, f"{cls.name}: cold_start is only ever True"
        assert orjson.loads(orjson.dumps(finding.evidence)) == list(finding.evidence), (
            f"{cls.name}: the evidence does not survive JSON"
        )
        rules.add(why["rule"])
    assert findings and rules, f"{cls.name}: nothing to check"


def _mutables(root) -> dict[int, object]:
    """Every mutable object reachable from ``root`` through containers and attributes, but for
    the inputs every instance is given (policies, steps): those are shared by design."""
    found: dict[int, object] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(
            obj, (*_IMMUTABLE, type, types.ModuleType, AgentPolicy, Step)
        ):
            continue
        seen.add(id(obj))
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            continue  # code, not state (a closure's cells are not followed)
        frozen = (
            isinstance(obj, (tuple, frozenset, types.MappingProxyType))
            or (isinstance(obj, BaseModel) and obj.model_config.get("frozen"))
            or (dataclasses.is_dataclass(obj) and obj.__dataclass_params__.frozen)
        )
        if not frozen:
            found[id(obj)] = obj
        if isinstance(obj, (dict, types.MappingProxyType)):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            stack += list(obj)
        else:
            stack += list(getattr(obj, "__dict__", {}).values())
            for klass in type(obj).__mro__:
                for slot in getattr(klass, "__slots__", ()):
                    if hasattr(obj, slot):
                        stack.append(getattr(obj, slot))
    return found


def check_no_shared_mutable_state(cls) -> None:
    for param in inspect.signature(cls).parameters.values():
        if param.default is not param.empty:
            assert isinstance(param.default, (*_IMMUTABLE, tuple, frozenset)), (
                f"{cls.name}: mutable default for {param.name}"
            )
    for key, info in cls.thresholds_model.model_fields.items():
        assert info.default_factory is None and isinstance(info.default, _IMMUTABLE), (
            f"{cls.name}: threshold {key} needs an immutable default (a number)"
        )
    assert cls.thresholds_model.model_config.get("frozen"), f"{cls.name}: thresholds not frozen"
    for klass in cls.__mro__[:-1]:
        for attr, value in vars(klass).items():
            if attr.startswith("__") or isinstance(value, (staticmethod, classmethod, property)):
                continue
            shared = [o for o in _mutables(value).values() if not callable(o)]
            assert not shared, f"{cls.name}: class attribute {attr} is mutable state shared by all"
    steps = workload()[:2_000]
    first, second = cls(), cls()
    feed(first, steps)  # state created on use counts too
    feed(second, steps)
    shared = _mutables(first).keys() & _mutables(second).keys()
    assert not shared, f"{cls.name}: two instances share {[_mutables(first)[i] for i in shared]}"


def _other_value(model: type[DetectorThresholds], key: str):
    """A valid value of the threshold ``key`` that is not its default."""
    default = model.model_fields[key].default
    for value in (1_000, 1, 0.5, 3) if default is None else (default + 1, default / 2, 0):
        if isinstance(default, int) and not isinstance(default, bool):
            value = int(value)
        try:
            model(**{key: value})
        except ValueError:
            continue
        if value != default:
            return value
    raise AssertionError(f"no valid value for {model.__name__}.{key} but its default")


def check_thresholds_declared_once(cls) -> None:
    model = cls.thresholds_model
    defaults = model().model_dump()
    for key, info in model.model_fields.items():
        assert info.description, f"{cls.name}: threshold {key} has no description"
    detector = cls()
    assert detector.thresholds == model(), f"{cls.name}: constructor defaults are not the model's"
    assert detector.limits.defaults == defaults, f"{cls.name}: limits are not the model's defaults"
    assert detector.limits(DEFAULT_POLICY) == defaults
    source = inspect.getsource(sys.modules[cls.__module__])
    assert ".threshold(" not in source, f"{cls.name}: thresholds read around self.limits"
    for key in defaults:
        value = _other_value(model, key)
        assert cls(**{key: value}).limits.defaults == {**defaults, key: value}, (
            f"{cls.name}: the constructor's {key}={value!r} does not reach its limits"
        )
        policy = parse_policy({"defaults": {"thresholds": {cls.name: {key: value}}}})
        assert detector.limits(policy.for_agent("svc", "agent"))[key] == value, (
            f"{cls.name}: the policy's thresholds.{cls.name}.{key} does not reach its limits"
        )
    assert cls.name in DETECTORS, f"{cls.name}: the policy file does not know it"


def check_doctests(cls) -> None:
    module = sys.modules[cls.__module__]
    own = (module.__name__, f"{module.__name__}.{cls.__qualname__}")
    examples = [t for t in doctest.DocTestFinder().find(module) if t.name in own and t.examples]
    assert examples, f"{module.__name__}: no doctest example in the module or class docstring"
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    assert attempted and not failed, f"{module.__name__}: {failed} of {attempted} doctests fail"


CHECKS = [
    check_contract,
    check_deterministic,
    check_bounded_across_sessions,
    check_bounded_within_a_session,
    check_findings_picklable,
    check_findings_explain_themselves,
    check_no_shared_mutable_state,
    check_thresholds_declared_once,
    check_doctests,
]


@by_name
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_every_detector(cls, check) -> None:
    check(cls)


def test_the_workload_exercises_every_detector():
    """The checks above mean little for a detector that never fires: extend ``_script`` then."""
    for cls in DETECTOR_CLASSES:
        findings = feed(cls(), workload())
        assert findings, f"{cls.name} found nothing in the workload"


def test_the_registry_is_the_policy_files_and_the_engines():
    from analyzer.engine import default_detectors

    assert DETECTORS == tuple(REGISTRY)
    assert [type(d) for d in default_detectors()] == DETECTOR_CLASSES
    assert len(workload()) == STEPS
