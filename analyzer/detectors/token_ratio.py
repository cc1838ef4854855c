"""Token ratio: a session reading far more than it writes, against its agent+model (semantic, SEV2).

A session's ratio is its cumulative input tokens over its cumulative output tokens, summed over
LLM steps only (``kind == "llm"``; agent spans that repeat their children's usage are ignored).
The field report: sessions at 74:1 and 175:1 where 5:1 is normal, an agent re-reading its whole
history (or a huge retrieval) to say little. One ``ratio_anomaly`` finding per session.

**When a session is judged**: on each of its LLM steps once it has ``min_llm_steps`` (default 3)
LLM steps, ``min_input_tokens`` (default 20,000) input tokens (below that the tokens are not worth
an incident, whatever the ratio) and some output tokens (no output usage reported: no ratio).

**Against what**: a baseline per (tenant, service, agent, model family) of log(session ratio):

- *warm-up*: until the key has ``min_sessions`` (default 20) sessions, the normal ratio is taken
  to be ``default_ratio`` (5:1) and a session is flagged when its ratio exceeds ``max_ratio``
  (default 50:1);
- *after*: flagged when log(ratio) is more than ``z`` (default 4) robust deviations above the
  baseline's centre AND the ratio is more than ``min_factor`` (default 2) times the baseline ratio
  (exp of the centre, the typical session's ratio). ``max_ratio`` no longer applies: an agent
  whose sessions are all 100:1 (summarising long documents) learns that this is its normal.

**Baseline statistics** (``_Baseline``, O(1) per key): the first ``_SEED`` (20) sessions are kept
as floats and the centre and scale are their median and 1.4826 × MAD (robust to the outliers a
cold start sees); after that the seed is dropped and each session updates an exponentially
weighted M-estimator with weight ``alpha`` (default 0.02, a memory of ~50 sessions): its residual
from the centre is clipped to ±3 scales (Huber), then centre += alpha·r, scale² = (1-alpha)·scale²
+ alpha·r². The scale is floored at ``_MIN_SCALE`` (0.1, ~10 %) so a very regular agent does not
flag tiny wobbles. Anomalous sessions feed the baseline too, clipped: one outlier moves the centre
by at most alpha·3·scale, but a lasting change (a new prompt) becomes the new normal after a few
dozen sessions instead of alerting forever (measured: after 30 sessions at 5:1, a switch to 40:1
is flagged on the next 24 sessions, then learned; 11 with alpha 0.05, 47 with 0.01).

**Feeding per session, not per step**: the ratio of a live session still moves (it usually grows
as the context accumulates), so a session is fed once, when it is *completed*: no LLM step from it
for ``idle_s`` (default 600 s, by the injected clock), or pushed out of the pending queue by
``max_pending`` newer sessions. It feeds its final ratio if it had ``min_llm_steps`` LLM steps and
some output. Live sessions are judged against completed ones; since a running ratio grows towards
its final value, that errs towards missing, not inventing, an anomaly early in a session. Pending
sessions are drained on every ``observe`` call (amortised O(1)); with no traffic nothing is fed,
and nothing needs judging either.

**Memory**, measured with ``sys.getsizeof`` over the objects, their ints/floats and the key tuple
(the key's strings are the steps' own; the tests check these bounds):

- per session (``_RatioState``): ~290 bytes, plus ~75 bytes while pending (an ``OrderedDict``
  entry). At most ``max_pending`` (default 100,000, the session table's cap) are pending, so this
  detector keeps at most that many states alive after the session table forgot them (~37 MB).
- per baseline key (``_Baseline``): ≤ 430 bytes during warm-up (the seed, an ``array('d')`` of
  ≤ 20 floats), 140 after, plus ~75 bytes of table entry and a 72-byte key tuple (with its four
  strings, ~250 more); at most ``max_keys`` (default 1,024) keys, least recently used forgotten
  first (that key starts its warm-up again): under 1 MB.

This detector's baselines live in one process; with several collectors each learns its own.

>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> sessions, detector = SessionTable(), TokenRatioDetector()
>>> def prompt(t, input_tokens, output_tokens):
...     step = Step(t, 1, "acme", "svc", "support", "s1", "u1", "t1", f"span{t}", "", "llm",
...                 model="gpt-4o", input_tokens=input_tokens, output_tokens=output_tokens)
...     return detector.observe(step, sessions.for_step(step, t), t)
>>> [prompt(t, 30_000, 200) for t in (1, 2)]
[None, None]
>>> finding = prompt(3, 30_000, 200)
>>> finding.kind, finding.severity, finding.signature, finding.evidence[0]["ratio"]
('ratio_anomaly', 'SEV2', 'support:gpt-4o', 150.0)
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from statistics import median
from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.finding import Finding
from analyzer.models import model_family
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.policy import AgentPolicy
    from analyzer.session import SessionState

_SEED = 20  # sessions whose median/MAD start a key's baseline
_CLIP = 3.0  # Huber clip of a residual, in scales
_MIN_SCALE = 0.1  # floor of the scale of log(ratio): ratios within ~10 % are never anomalous
_MAD_TO_SIGMA = 1.4826
_SEVERITIES = ("SEV1", "SEV2", "SEV3")

BaselineKey = tuple[str, str, str, str]  # tenant, service, agent, model family


class _Baseline:
    """Robust streaming location/scale of log(session ratio) for one agent+model."""

    __slots__ = ("n", "center", "scale", "seed")

    def __init__(self) -> None:
        self.n = 0
        self.center = 0.0
        self.scale = 0.0
        self.seed: array | None = array("d")

    def update(self, x: float, alpha: float) -> None:
        self.n += 1
        if self.seed is not None:
            self.seed.append(x)
            self.center = median(self.seed)
            self.scale = _MAD_TO_SIGMA * median(abs(v - self.center) for v in self.seed)
            if len(self.seed) >= _SEED:
                self.seed = None  # from here on: O(1) exponentially weighted updates
            return
        limit = _CLIP * max(self.scale, _MIN_SCALE)
        r = min(max(x - self.center, -limit), limit)
        self.center += alpha * r
        self.scale = math.sqrt((1 - alpha) * self.scale**2 + alpha * r * r)

    @property
    def ratio(self) -> float:
        return math.exp(self.center)


class _RatioState:
    __slots__ = ("key", "policy", "input", "output", "llm_steps", "last_ns", "flagged", "fed")

    def __init__(self, key: BaselineKey, policy: AgentPolicy) -> None:
        self.key = key
        self.policy = policy  # shared with the session; read again when the session is fed
        self.input = 0
        self.output = 0
        self.llm_steps = 0
        self.last_ns = 0
        self.flagged = False
        self.fed = False


class TokenRatioThresholds(DetectorThresholds):
    """Thresholds of the token ratio detector (policy ``thresholds.token_ratio``)."""

    max_ratio: float = Field(
        50.0, gt=0, description="input/output ratio flagged without a baseline"
    )
    default_ratio: float = Field(
        5.0, gt=0, description="normal input/output ratio without a baseline"
    )
    min_sessions: int = Field(20, ge=1, description="finished sessions before the baseline is used")
    min_llm_steps: int = Field(3, ge=1, description="LLM steps before a session is judged")
    min_input_tokens: int = Field(
        20_000, ge=0, description="input tokens before a session is judged"
    )
    z: float = Field(4.0, gt=0, description="robust deviations from the baseline that are flagged")
    min_factor: float = Field(
        2.0, gt=0, description="ratio at least this many times the normal one"
    )


class TokenRatioDetector:
    name = "token_ratio"
    kinds = frozenset({"llm"})  # the engine asks this detector about LLM steps only
    thresholds_model = TokenRatioThresholds

    def __init__(
        self,
        *,
        alpha: float = 0.02,
        idle_s: float = 600.0,
        max_pending: int = 100_000,
        max_keys: int = 1024,
        **thresholds: float,
    ) -> None:
        self.thresholds = TokenRatioThresholds(**thresholds)
        self.limits = ResolvedThresholds(self.name, self.thresholds)
        self.alpha = alpha
        self.idle_ns = int(idle_s * 1e9)
        self.max_pending = max_pending
        self.max_keys = max_keys
        self.baselines: OrderedDict[BaselineKey, _Baseline] = OrderedDict()
        self.pending: OrderedDict[_RatioState, None] = OrderedDict()  # least recently active first
        self._keys: dict[BaselineKey, BaselineKey] = {}
        self._completed_at = -1

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None:
        self._complete(now_ns)
        if step.kind != "llm" or step.input_tokens <= 0:
            return None
        state: _RatioState = session.state(self.name, lambda: self._new_state(step, session))
        state.input += step.input_tokens
        state.output += max(step.output_tokens, 0)
        state.llm_steps += 1
        state.last_ns = now_ns  # activity by arrival: the pending queue is in this order
        if not state.fed:
            self.pending[state] = None
            self.pending.move_to_end(state)
            if len(self.pending) > self.max_pending:
                self._feed(self.pending.popitem(last=False)[0])
        if state.flagged:
            return None
        return self._judge(state, step, session)

    def baseline_ratio(self, key: BaselineKey) -> tuple[float, int] | None:
        """The key's typical ratio and how many sessions it has seen (None: no baseline)."""
        baseline = self.baselines.get(key)
        return None if baseline is None else (baseline.ratio, baseline.n)

    def _new_state(self, step: Step, session: SessionState) -> _RatioState:
        agent = step.agent or session.agent
        key = (step.tenant, step.service, agent, model_family(step.model))
        if len(self._keys) < 10_000:  # one tuple per agent and model, shared by its sessions
            key = self._keys.setdefault(key, key)
        return _RatioState(key, session.policy)

    def _judge(self, state: _RatioState, step: Step, session: SessionState) -> Finding | None:
        policy = state.policy
        limits = self.limits(policy)
        if (
            state.output <= 0
            or state.llm_steps < limits["min_llm_steps"]
            or state.input < limits["min_input_tokens"]
        ):
            return None
        ratio = state.input / state.output
        baseline = self.baselines.get(state.key)
        if baseline is None or baseline.n < limits["min_sessions"]:
            normal = limits["default_ratio"]
            if ratio <= limits["max_ratio"]:
                return None
            deviations, sessions_seen = None, 0 if baseline is None else baseline.n
        else:
            self.baselines.move_to_end(state.key)
            normal = baseline.ratio
            deviations = (math.log(ratio) - baseline.center) / max(baseline.scale, _MIN_SCALE)
            if deviations <= limits["z"]:
                return None
            if ratio <= limits["min_factor"] * normal:
                return None
            sessions_seen = baseline.n
        state.flagged = True
        tenant, service, agent, family = state.key
        override = policy.severity.get(self.name)
        measures = {
            "ratio": round(ratio, 1),
            "baseline_ratio": round(normal, 1),
            "baseline_sessions": sessions_seen,
            "warm_up": deviations is None,
            "input_tokens": state.input,
            "output_tokens": state.output,
            "llm_steps": state.llm_steps,
        }
        if deviations is not None:
            measures["deviations"] = round(deviations, 1)
        return Finding(
            detector=self.name,
            kind="ratio_anomaly",
            incident_class="semantic",
            severity=override if override in _SEVERITIES else "SEV2",
            title=(
                f"{agent or service}: input:output tokens {ratio:.0f}:1 on {family or 'unknown'}"
                f" (normal {normal:.0f}:1)"
            ),
            step=step,
            signature=f"{agent or service}:{family or 'unknown'}",
            evidence=(measures, step.evidence()),
        )

    def _complete(self, now_ns: int) -> None:
        """Feed the sessions silent for ``idle_s``: they are completed (once per clock tick: a
        batch shares one clock)."""
        if now_ns == self._completed_at:
            return
        self._completed_at = now_ns
        pending = self.pending
        while pending:
            oldest = next(iter(pending))
            if oldest.last_ns >= now_ns - self.idle_ns:
                break
            pending.popitem(last=False)
            self._feed(oldest)

    def _feed(self, state: _RatioState) -> None:
        state.fed = True
        if state.output <= 0 or state.llm_steps < self.limits(state.policy)["min_llm_steps"]:
            return
        baseline = self.baselines.get(state.key)
        if baseline is None:
            baseline = self.baselines[state.key] = _Baseline()
            if len(self.baselines) > self.max_keys:
                self.baselines.popitem(last=False)
        else:
            self.baselines.move_to_end(state.key)
        baseline.update(math.log(state.input / state.output), self.alpha)
