"""What every detector shares: the base of its thresholds model, and the one way to read them.

A detector's thresholds model (``LoopThresholds`` …) lives in the detector's own file: one field
per threshold, each with its default value, bounds and a description. The detector's constructor
validates its keyword arguments with it (``LoopDetector(repeats=2)``), and policy files override
the values per agent (``thresholds.loop.repeats``; ``analyzer.policy`` derives that section of the
file from the model). A detector reads its thresholds one way only: ``self.limits(policy)``, the
model's values with the agent's policy overrides on top, resolved once per policy rule.

>>> from pydantic import Field
>>> from analyzer.policy import AgentPolicy
>>> class DemoThresholds(DetectorThresholds):
...     repeats: int = Field(3, ge=1, description="identical calls that make a loop")
>>> limits = ResolvedThresholds("demo", DemoThresholds())
>>> limits(AgentPolicy())
{'repeats': 3}
>>> limits(AgentPolicy(thresholds={"demo": {"repeats": 5}}))
{'repeats': 5}

This module imports nothing from ``analyzer.policy`` or ``analyzer.session`` at run time, and a
detector's file must not either (only under ``TYPE_CHECKING``): ``analyzer.policy`` builds its
models from the detector registry, and ``analyzer.session`` imports ``analyzer.policy``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from analyzer.policy import AgentPolicy

Threshold = float | None  # ints, floats; None where a threshold may be unset


class DetectorThresholds(BaseModel):
    """Base of a detector's thresholds model: strict, read-only, no unknown keys.

    Every field needs a default and a ``description`` (units in names: ``_usd``, ``_tokens``,
    ``_s``), and its bounds (``ge``/``gt``/``le``): policy files are checked against them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResolvedThresholds:
    """One detector's thresholds per policy rule, resolved once: rules are few, steps many.

    ``limits = ResolvedThresholds("token_ratio", TokenRatioThresholds())``, then
    ``limits(policy)["z"]`` per step costs one dict lookup instead of two mapping lookups per
    threshold. ``defaults``: the model's values (what applies where no policy overrides them).
    """

    __slots__ = ("detector", "defaults", "_by_policy")

    def __init__(self, detector: str, thresholds: DetectorThresholds) -> None:
        self.detector = detector
        self.defaults: dict[str, Threshold] = thresholds.model_dump()
        self._by_policy: dict[int, tuple[AgentPolicy, dict[str, Threshold]]] = {}

    def __call__(self, policy: AgentPolicy) -> dict[str, Threshold]:
        entry = self._by_policy.get(id(policy))
        if entry is None or entry[0] is not policy:  # the policy kept alive: ids are not reused
            if len(self._by_policy) >= 1024:  # reloads leave old rules behind
                self._by_policy.clear()
            values = {k: policy.threshold(self.detector, k, d) for k, d in self.defaults.items()}
            entry = self._by_policy[id(policy)] = (policy, values)
        return entry[1]
