"""Token ratio: a session reading far more than it writes, against its agent+model (semantic, SEV2).

A session's ratio is its cumulative input tokens over its cumulative output tokens, summed over
LLM steps only (``kind == "llm"``; agent spans that repeat their children's usage are ignored).
The field report: sessions at 74:1 and 175:1 where 5:1 is that agent's normal, an agent
re-reading its whole history (or a huge retrieval) to say little. A coding agent's normal is
50:1 or more (it reads files and logs, writes little): no fixed limit fits every agent, so the
judgement is against the agent+model's own baseline. One ``ratio_anomaly`` finding per session.

**The baseline** is per (tenant, service, agent, model family): the log-ratios of the ``window``
(default 64) most recently active sessions of that key, *including sessions still running*.
A session contributes once it has ``min_llm_steps`` (default 3) LLM steps and some output; each
later LLM step *replaces* its contribution with its current ratio (one value per session, never
one per step), and moves it to the window's recent end. Its statistics are robust: the median of
log(ratio) and σ = 1.4826 × MAD (floored at ``_MIN_SCALE``, 0.1, ~10 %, so a very regular agent
does not flag wobbles). A session is judged against the *other* sessions of its window (its own
value is left out), so a baseline is warm after ``min_sessions`` other sessions, however busy
the hour: no idle timeout, nothing waits for a session to end. A lasting change (a new prompt)
is the new normal once it fills half the window (~32 sessions) instead of alerting forever.

**When a session is judged**: on each of its LLM steps once it has ``min_llm_steps`` LLM steps,
``min_input_tokens`` (default 20,000) input tokens (below that the tokens are not worth an
incident, whatever the ratio) and some output tokens (no output usage reported: no ratio).

- *warm* (``min_sessions``, default 20, other sessions in the baseline): flagged when
  log(ratio) > median + max(``z`` · σ, log ``min_factor``), i.e. more than ``z`` (default 4)
  robust deviations above the agent's normal AND at least ``min_factor`` (default 5) times it.
  The floor on the multiple matters for coding agents: a session's cumulative ratio grows with
  its length (each call re-reads the history), so a long run is legitimately 2-3× a short one;
  on AutoCodeRover's 600 SWE-bench runs (real per-call usage) normal sessions reach 4.4× the
  running median (3×: 5 of 594 normal sessions flagged, 4×: 1, 5×: none), while the field
  failures this detector exists for are 15× and 35× (74:1 and 175:1 against an agent's 5:1).
- *cold* (fewer sessions): a fixed limit would page on every agent whose normal is above it,
  so only an extreme, well-evidenced case fires: ratio ≥ ``cold_ratio`` (default 500:1) with
  ≥ ``cold_min_input_tokens`` (default 200,000) input tokens. 500:1 is ~7× the highest normal
  seen on the public replay sets (SWE-agent's median ~68:1, tau-bench airline's ~36:1) and 100×
  a chat agent's 5:1; 200k input tokens is several full context windows of re-reading. The
  title and evidence say the judgement is a cold-start one.

Only a ratio far *above* the baseline is flagged: that is the field failure (reading without
progress). Far below (writing a lot for what it reads) is a long generation; its cost is the
``cost_runaway`` detector's concern and it is not a reliability failure on its own.

The evidence says why it fired (``analyzer.finding.explain``: ``why``, ``threshold``,
``observed``, ``baseline``, ``cold_start``): the rule (``baseline`` or ``cold_start``), the
observed ratio, the baseline's median ratio, σ of log(ratio) and the spread as a factor, the ratio that would
have fired, the multiple, the deviations, the sessions in the baseline, warm or not, and the
session's tokens and LLM steps.

**Event time, restarts**: the detector reads no clock; its verdicts depend only on the steps'
order and content, so a replay, a backlog or a slow exporter gets the same verdicts as live
traffic. A session's slot in the window is the hash of its session key, so the same session
seen again (after the session table forgot it, or once its late session id moves it from its
trace) replaces its value instead of counting twice.

**Seeded from the store**: ``seed(sessions, now_ns)`` takes the recent sessions
``analyzer.baselines`` sums from ClickHouse (the same ratio, key and ``min_llm_steps``), at
start-up and every few minutes, so a restarted collector, or a second one on the same store,
judges against the baseline warm at once (the evidence then says ``baseline``, not
``cold_start``). A stored session and the one seen here merge by the time of their latest LLM
step: the later wins, a tie the stored value (complete, where the restart replay saw part of it).
``analyzer/restore.py`` then replays the look-back's steps (``replay=True``, findings dropped).

**Memory** (measured with ``sys.getsizeof``; the tests check these bounds): per session
(``_RatioState``) under 300 bytes, held by the session table (nothing here outlives it); per
baseline key (``_Baseline``) three arrays of ≤ ``window`` session serials, their log-ratios and
their latest step's time, under 1.9 KB at the default 64; at most ``max_keys`` (default 1,024)
keys, least recently used forgotten first (that key is cold again until the next seed): ~2 MB
with the key tuples. Judging a step costs a
median of ≤ 64 floats (a few µs).

>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> sessions, detector = SessionTable(), TokenRatioDetector()
>>> def prompt(t, input_tokens, output_tokens):
...     step = Step(t, 1, "acme", "svc", "support", "s1", "u1", "t1", f"span{t}", "", "llm",
...                 model="gpt-4o", input_tokens=input_tokens, output_tokens=output_tokens)
...     return detector.observe(step, sessions.for_step(step, t), t)
>>> [prompt(t, 100_000, 100) for t in (1, 2)]
[None, None]
>>> finding = prompt(3, 100_000, 100)
>>> finding.kind, finding.severity, finding.signature, finding.evidence[0]["ratio"]
('ratio_anomaly', 'SEV2', 'support:gpt-4o', 1000.0)
>>> finding.evidence[0]["rule"], finding.evidence[0]["warm"]
('cold_start', False)
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from statistics import median
from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.detectors.seeding import StoredSession
from analyzer.finding import Finding, explain
from analyzer.models import model_family
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.policy import AgentPolicy
    from analyzer.session import SessionState

_MIN_SCALE = 0.1  # floor of σ of log(ratio): ratios within ~10 % are never anomalous
_MAD_TO_SIGMA = 1.4826
_SEVERITIES = ("SEV1", "SEV2", "SEV3")

BaselineKey = tuple[str, str, str, str]  # tenant, service, agent, model family


class _Baseline:
    """The log-ratios of the most recently active sessions of one agent+model, one per session."""

    __slots__ = ("serials", "values", "stamps")

    def __init__(self) -> None:
        self.serials = array("q")  # session serials, least recently active first
        self.values = array("d")  # their log(ratio), in the same order
        self.stamps = array("q")  # their latest LLM step's span time (to merge a seed)

    def put(self, serial: int, x: float, stamp: int, size: int) -> None:
        """Set (or replace) a session's contribution; keep the ``size`` most recent (O(size))."""
        serials, values, stamps = self.serials, self.values, self.stamps
        if serials and serials[-1] == serial:
            values[-1] = x  # the usual case: the same session's next step
            stamps[-1] = max(stamps[-1], stamp)
            return
        self.drop(serial)
        serials.append(serial)
        values.append(x)
        stamps.append(stamp)
        if len(serials) > size:
            del serials[0], values[0], stamps[0]

    def drop(self, serial: int) -> None:
        try:
            i = self.serials.index(serial)
        except ValueError:
            return
        del self.serials[i], self.values[i], self.stamps[i]

    def seed(self, stored: list[tuple[int, float, int]], size: int) -> None:
        """Merge stored sessions' (serial, log-ratio, stamp): per session the later stamp wins, a
        tie the stored value (complete, where a replay saw only the steps of the look-back); the
        ``size`` latest are kept, in stamp order."""
        merged = {
            serial: (stamp, x)
            for serial, x, stamp in zip(self.serials, self.values, self.stamps, strict=True)
        }
        for serial, x, stamp in stored:
            known = merged.get(serial)
            if known is None or stamp >= known[0]:
                merged[serial] = (stamp, x)
        latest = sorted(merged.items(), key=lambda item: item[1][0])[-size:]
        self.serials = array("q", (serial for serial, _ in latest))
        self.values = array("d", (x for _, (_, x) in latest))
        self.stamps = array("q", (stamp for _, (stamp, _) in latest))

    def stats(self, exclude: int) -> tuple[float, float, int]:
        """(median, σ, n) of log(ratio) over the window without session ``exclude``."""
        values = [
            x for serial, x in zip(self.serials, self.values, strict=True) if serial != exclude
        ]
        if not values:
            return 0.0, 0.0, 0
        center = median(values)
        sigma = _MAD_TO_SIGMA * median(abs(x - center) for x in values)
        return center, sigma, len(values)


class _RatioState:
    __slots__ = ("key", "policy", "serial", "input", "output", "llm_steps", "flagged")

    def __init__(self, key: BaselineKey, policy: AgentPolicy, serial: int) -> None:
        self.key = key
        self.policy = policy  # shared with the session
        self.serial = serial  # hash of the session's key: its slot in the baseline window
        self.input = 0
        self.output = 0
        self.llm_steps = 0
        self.flagged = False


class TokenRatioThresholds(DetectorThresholds):
    """Thresholds of the token ratio detector (policy ``thresholds.token_ratio``)."""

    min_sessions: int = Field(
        20, ge=1, description="other sessions in the agent+model baseline before it is used (warm)"
    )
    min_llm_steps: int = Field(
        3, ge=1, description="LLM steps before a session is judged or feeds the baseline"
    )
    min_input_tokens: int = Field(
        20_000, ge=0, description="input tokens (session total) before a session is judged"
    )
    z: float = Field(
        4.0, gt=0, description="robust deviations (1.4826 × MAD of log ratio) above the median"
    )
    min_factor: float = Field(
        5.0, gt=1, description="warm: ratio at least this many times the baseline median ratio"
    )
    cold_ratio: float = Field(
        500.0, gt=0, description="cold start: input/output ratio (x:1) flagged without a baseline"
    )
    cold_min_input_tokens: int = Field(
        200_000, ge=0, description="cold start: input tokens (session total) before flagging"
    )


class TokenRatioDetector:
    name = "token_ratio"
    kinds = frozenset({"llm"})  # the engine asks this detector about LLM steps only
    thresholds_model = TokenRatioThresholds

    def __init__(self, *, window: int = 64, max_keys: int = 1024, **thresholds: float) -> None:
        self.thresholds = TokenRatioThresholds(**thresholds)
        self.limits = ResolvedThresholds(self.name, self.thresholds)
        self.window = window
        self.max_keys = max_keys
        self.baselines: OrderedDict[BaselineKey, _Baseline] = OrderedDict()
        self._keys: dict[BaselineKey, BaselineKey] = {}

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None:
        if step.kind != "llm" or step.input_tokens <= 0:
            return None
        state: _RatioState = session.state(self.name, lambda: self._new_state(step, session))
        state.input += step.input_tokens
        state.output += max(step.output_tokens, 0)
        state.llm_steps += 1
        limits = self.limits(state.policy)
        if state.output <= 0 or state.llm_steps < limits["min_llm_steps"]:
            return None
        ratio = state.input / state.output
        baseline = self._baseline(state.key)
        serial = hash(session.key)
        if serial != state.serial:  # its session id arrived after its trace: still one entry
            baseline.drop(state.serial)
            state.serial = serial
        finding = None
        if not state.flagged and state.input >= limits["min_input_tokens"]:
            finding = self._judge(state, step, ratio, baseline, limits)
        baseline.put(state.serial, math.log(ratio), step.time_ns, self.window)
        return finding

    def seed(self, sessions: list[StoredSession], now_ns: int) -> None:
        """Warm the baselines with stored sessions (``analyzer.baselines``), oldest first: those
        with ``min_llm_steps`` LLM steps and output (the defaults: a seed has no policy), merged
        with what this process saw (``_Baseline.seed``); a seeded key counts as recently used."""
        by_key: dict[BaselineKey, list[tuple[int, float, int]]] = {}
        min_steps = self.thresholds.min_llm_steps
        for s in sessions:
            if s.llm_steps < min_steps or s.output_tokens <= 0 or s.input_tokens <= 0:
                continue
            key = (s.tenant, s.llm_service, s.llm_agent, model_family(s.model))
            ratio = math.log(s.input_tokens / s.output_tokens)
            by_key.setdefault(key, []).append((hash(s.key), ratio, s.last_seen_ns))
        for key, stored in by_key.items():
            self._baseline(self._intern(key)).seed(stored[-self.window :], self.window)

    def baseline_ratio(self, key: BaselineKey) -> tuple[float, int] | None:
        """The key's median ratio and how many sessions its window holds (None: no baseline)."""
        baseline = self.baselines.get(key)
        if baseline is None:
            return None
        center, _sigma, n = baseline.stats(exclude=0)
        return math.exp(center), n

    def _new_state(self, step: Step, session: SessionState) -> _RatioState:
        agent = step.agent or session.agent
        key = (step.tenant, step.service, agent, model_family(step.model))
        return _RatioState(self._intern(key), session.policy, hash(session.key))

    def _intern(self, key: BaselineKey) -> BaselineKey:
        if len(self._keys) < 10_000:  # one tuple per agent and model, shared by its sessions
            key = self._keys.setdefault(key, key)
        return key

    def _baseline(self, key: BaselineKey) -> _Baseline:
        baseline = self.baselines.get(key)
        if baseline is None:
            baseline = self.baselines[key] = _Baseline()
            if len(self.baselines) > self.max_keys:
                self.baselines.popitem(last=False)
        else:
            self.baselines.move_to_end(key)
        return baseline

    def _judge(
        self, state: _RatioState, step: Step, ratio: float, baseline: _Baseline, limits
    ) -> Finding | None:
        others = len(baseline.serials) - (state.serial in baseline.serials)
        if others < limits["min_sessions"] and (
            ratio < limits["cold_ratio"] or state.input < limits["cold_min_input_tokens"]
        ):
            return None  # cold and not extreme: skip the medians (this runs on every LLM step)
        center, sigma, n = baseline.stats(exclude=state.serial)
        warm = n >= limits["min_sessions"]
        tenant, service, agent, family = state.key
        who, model = agent or service, family or "unknown"
        if warm:
            sigma = max(sigma, _MIN_SCALE)
            margin = max(limits["z"] * sigma, math.log(limits["min_factor"]))
            threshold = math.exp(center + margin)
            if ratio <= threshold:
                return None
            normal = math.exp(center)
            title = (
                f"{who}: input:output tokens {ratio:.0f}:1 on {model}, this agent's normal"
                f" {normal:.0f}:1 over {n} sessions ({ratio / normal:.0f}×)"
            )
        else:
            threshold = limits["cold_ratio"]
            if ratio < threshold or state.input < limits["cold_min_input_tokens"]:
                return None
            normal = math.exp(center) if n else None
            title = (
                f"{who}: input:output tokens {ratio:.0f}:1 on {model} over {state.input:,} input"
                f" tokens (cold start: {n} sessions in this agent's baseline, {threshold:.0f}:1"
                " rule)"
            )
        state.flagged = True
        if warm:
            why = (
                f"input:output tokens {ratio:.0f}:1 is {ratio / normal:.0f}× this agent's normal"
                f" {normal:.0f}:1 over {n} sessions (the rule fires above {threshold:.0f}:1)"
            )
        else:
            why = (
                f"input:output tokens {ratio:.0f}:1 over {state.input:,} input tokens, judged"
                f" without a warm baseline ({n} of {limits['min_sessions']:g} sessions; the"
                f" cold-start rule fires at {threshold:.0f}:1 over"
                f" {limits['cold_min_input_tokens']:,} input tokens)"
            )
        measures = explain(
            why=why,
            rule="baseline" if warm else "cold_start",
            threshold=round(threshold, 1),
            observed=round(ratio, 1),
            baseline=None if normal is None else round(normal, 1),
            cold_start=not warm,
            warm=warm,
            warm_up=not warm,
            ratio=round(ratio, 1),
            threshold_ratio=round(threshold, 1),
            baseline_ratio=None if normal is None else round(normal, 1),
            baseline_sigma_log=round(sigma, 3) if n else None,
            baseline_spread=round(math.exp(sigma), 2) if n else None,
            multiple=None if normal is None else round(ratio / normal, 1),
            deviations=round((math.log(ratio) - center) / max(sigma, _MIN_SCALE), 1) if n else None,
            baseline_sessions=n,
            min_sessions=limits["min_sessions"],
            input_tokens=state.input,
            output_tokens=state.output,
            llm_steps=state.llm_steps,
        )
        if not warm:
            measures["cold_min_input_tokens"] = limits["cold_min_input_tokens"]
        override = state.policy.severity.get(self.name)
        return Finding(
            detector=self.name,
            kind="ratio_anomaly",
            incident_class="semantic",
            severity=override if override in _SEVERITIES else "SEV2",
            title=title,
            step=step,
            signature=f"{who}:{model}",
            evidence=(measures, step.evidence()),
        )
