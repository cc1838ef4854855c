"""Streaming detectors: one file each, pure, clock injected, state bounded per session.

Every detector declares, once, on its class: its ``name``, the step ``kinds`` it looks at (the
engine skips the rest) and its ``thresholds_model``, a ``DetectorThresholds`` model in its own file
whose fields carry each threshold's default, bounds and description. Its constructor takes the
thresholds as keywords, validated by that model (``self.thresholds``), and it reads them one way:
``self.limits(session.policy)``, the defaults with the agent's policy overrides on top
(``analyzer.detectors.base``). ``observe(step, session, now_ns) -> Finding | None`` is the rest. A
detector keeps per-session state in ``session.state(name, factory)`` and nothing unbounded
anywhere else.

``REGISTRY`` (also ``registered()``) maps each name to its class, in the order the engine runs
them; ``analyzer.engine.default_detectors()`` builds one of each, and ``analyzer.policy`` builds
the policy file's ``thresholds``, ``severity`` and ``actions`` sections from it.

>>> list(REGISTRY)
['loop', 'context_growth', 'token_ratio', 'out_of_scope_tool', 'cost_runaway', 'infrastructure']
>>> REGISTRY["loop"](repeats=2).limits.defaults
{'repeats': 2, 'window': 12, 'cycles': 4, 'failures': 3}

Adding a detector: write its file, ``analyzer/detectors/<name>.py``, holding its thresholds
model (a ``DetectorThresholds``: each field with its default, bounds and a description), the class
(``name``, ``kinds``, ``thresholds_model``, a constructor taking ``**thresholds`` into that model
and reading them through ``self.limits``, ``observe``), a doctest example and its own tests; then
register it: import the class here and add it to ``_DETECTORS``. Nothing else to edit: the engine
runs it, policy files take its ``thresholds``/``severity``/``actions`` keys,
``tests/analyzer/test_every_detector.py`` checks it, and ``agentwatch policy schema >
schemas/policy.schema.json`` refreshes the schema (a test says when it is stale). Import
``SessionState`` and ``AgentPolicy`` under ``TYPE_CHECKING`` only: ``analyzer.policy`` imports
this registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Protocol

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.detectors.context_growth import ContextGrowthDetector
from analyzer.detectors.cost_runaway import CostRunawayDetector
from analyzer.detectors.infrastructure import InfrastructureDetector
from analyzer.detectors.loop import LoopDetector
from analyzer.detectors.out_of_scope_tool import OutOfScopeToolDetector
from analyzer.detectors.token_ratio import TokenRatioDetector
from analyzer.finding import Finding
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.session import SessionState

__all__ = ["REGISTRY", "Detector", "DetectorThresholds", "ResolvedThresholds", "registered"]


class Detector(Protocol):
    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]  # the step kinds it looks at (e.g. {"tool"})
    thresholds_model: ClassVar[type[DetectorThresholds]]
    thresholds: DetectorThresholds  # this instance's defaults (policy overrides them per agent)
    limits: ResolvedThresholds  # how it reads them: ``self.limits(session.policy)["key"]``

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None: ...


#: The order the engine runs them in (and lists them in the policy file's schema).
_DETECTORS: tuple[type[Detector], ...] = (
    LoopDetector,
    ContextGrowthDetector,
    TokenRatioDetector,
    OutOfScopeToolDetector,
    CostRunawayDetector,
    InfrastructureDetector,
)


def _registry(classes: tuple[type[Detector], ...]) -> Mapping[str, type[Detector]]:
    registry: dict[str, type[Detector]] = {}
    for cls in classes:
        if cls.name in registry:
            raise ValueError(f"two detectors named {cls.name!r}: {registry[cls.name]} and {cls}")
        if not issubclass(cls.thresholds_model, DetectorThresholds):
            raise TypeError(f"{cls.__name__}.thresholds_model is not a DetectorThresholds model")
        registry[cls.name] = cls
    return MappingProxyType(registry)


#: Detector name -> its class, read-only.
REGISTRY: Mapping[str, type[Detector]] = _registry(_DETECTORS)


def registered() -> Mapping[str, type[Detector]]:
    """Every detector class by name, in the order the engine runs them."""
    return REGISTRY
