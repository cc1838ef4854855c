"""Context growth: a session's prompt growing out of hand, step after step (semantic).

Over a session's LLM steps (``kind == "llm"`` with ``input_tokens > 0``; agent spans that repeat
their children's usage are ``kind == "agent"`` and ignored), two kinds:

- ``spiral`` (SEV2): each of the last ``steps`` LLM steps (default 3) sent at least
  ``growth_factor`` (default 2.0) times the input tokens of the one before — 2k → 4k → 8k → 16k
  is flagged at the 16k step — and that step sent at least ``min_input_tokens`` (default 8,000:
  a prompt doubling from 200 to 1,600 tokens costs nothing). Agents normally grow their context
  additively (a tool result appended per step); multiplicative growth is the history being
  re-sent into itself, which ends at the context limit after a few more steps, at a cost that
  doubles on each. A step that grows less resets the count.
- ``near_context_limit`` (SEV3): one step's input tokens reached ``context_share`` (default 0.8)
  of the model's context window (``analyzer.models.context_window``, or the policy threshold
  ``context_window`` when set, for models the table does not know; unknown and not set: this
  check is skipped). SEV3 because it is caught before the failure: the call still succeeded, and
  the one that overflows is the infrastructure detector's (a context-length error).

A policy ``severity`` override for ``context_growth`` wins over both. Each kind is reported once
per session. When both fire on the same step the spiral is reported (it is the cause and the
higher severity) and the limit stays armed for the next step. Signature: the model family
(``gpt-4o``, ``claude-sonnet-4``), so one model's spirals of one agent are one incident. Evidence:
why it fired (``analyzer.finding.explain``), the last few steps' input tokens and span ids (oldest
first), then the flagged step.

Thresholds (``growth_factor``, ``steps``, ``min_input_tokens``, ``context_share``,
``context_window``): ``ContextGrowthThresholds`` (defaults there; the constructor takes them as
keywords), overridden per agent by policy ``thresholds.context_growth``. The clock is not used:
growth is counted in steps, not time.

Limitations: one growth chain per session across models and traces, so a session interleaving a
small router model with a large worker model, or running sub-agents in parallel, resets its chain
on each small call (a spiral there may be missed, never invented). The comparison with the agent's
own baseline growth (DESIGN.md §5) is not done here.

State per session (``_GrowthState``): the last ``_HISTORY`` (4) steps as input tokens and span id
pairs, the growth run length and two flags. Measured with ``sys.getsizeof`` over the object, its
tuples, ints and span-id strings (16 hex characters): about 780 bytes when full, fixed
whatever the session's length (``tests/analyzer/test_context_growth.py`` checks < 1 KiB).

>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> sessions, detector = SessionTable(), ContextGrowthDetector()
>>> def prompt(t, input_tokens, model="gpt-4o-2024-08-06"):
...     step = Step(t, 1, "acme", "svc", "support", "s1", "u1", "t1", f"span{t}", "", "llm",
...                 model=model, input_tokens=input_tokens, output_tokens=300)
...     return detector.observe(step, sessions.for_step(step, t), t)
>>> [prompt(t, tokens) for t, tokens in enumerate((2_000, 4_100, 8_300))]
[None, None, None]
>>> finding = prompt(3, 17_000)
>>> finding.kind, finding.severity, finding.signature, finding.step.span_id
('spiral', 'SEV2', 'gpt-4o', 'span3')
>>> [e["input_tokens"] for e in finding.evidence[1:-1]]
[2000, 4100, 8300, 17000]
>>> finding.evidence[0]["why"]
'3 LLM steps in a row each sent ×2 or more the input tokens of the one before, to 17,000 (the rule fires at 3 steps over 8,000 tokens)'
>>> finding = prompt(4, 110_000)
>>> finding.kind, finding.severity
('near_context_limit', 'SEV3')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.finding import Finding, explain
from analyzer.models import context_window, model_family
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.session import SessionState

_HISTORY = 4  # steps kept per session for evidence; the run length itself is a counter


def _span_text(span: int | str) -> str:
    return f"{span:016x}" if isinstance(span, int) else span


_SPIRAL, _NEAR_LIMIT = 1, 2  # flag bits: each kind once per session
_SEVERITIES = ("SEV1", "SEV2", "SEV3")


class _GrowthState:
    __slots__ = ("recent", "run", "flagged")

    def __init__(self) -> None:
        # flat (tokens, span id as int, tokens, span id, …), oldest first: no pair tuples and no
        # 16-character strings, ~170 B less per session than pairs of (int, str)
        self.recent: tuple[int, ...] = ()
        self.run = 0  # consecutive LLM steps that each grew by >= growth_factor
        self.flagged = 0  # bits: _SPIRAL, _NEAR_LIMIT


class ContextGrowthThresholds(DetectorThresholds):
    """Thresholds of the context growth detector (policy ``thresholds.context_growth``)."""

    growth_factor: float = Field(2.0, gt=1, description="input growth per LLM step that counts")
    steps: int = Field(3, ge=1, description="consecutive growing steps that make a spiral")
    min_input_tokens: int = Field(
        8_000, ge=0, description="input tokens below which nothing is flagged"
    )
    context_window: int | None = Field(
        None,
        ge=1,
        description="the model's context window in tokens (unset: the model table's)",
    )
    context_share: float = Field(
        0.8, gt=0, le=1, description="share of the context window that is near the limit"
    )


class ContextGrowthDetector:
    name = "context_growth"
    kinds = frozenset({"llm"})  # the engine asks this detector about LLM steps only
    thresholds_model = ContextGrowthThresholds

    def __init__(self, **thresholds: float | None) -> None:
        self.thresholds = ContextGrowthThresholds(**thresholds)
        self.limits = ResolvedThresholds(self.name, self.thresholds)

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None:
        if step.kind != "llm" or step.input_tokens <= 0:
            return None
        state: _GrowthState = session.state(self.name, _GrowthState)
        limits = self.limits(session.policy)
        tokens = step.input_tokens
        factor = limits["growth_factor"]
        previous = state.recent[-2] if state.recent else 0
        state.run = state.run + 1 if previous and tokens >= factor * previous else 0
        try:
            span = int(step.span_id, 16)  # OTLP span ids are 16 hex digits
        except ValueError:
            span = step.span_id  # kept as it is (hand-made test spans)
        state.recent = (*state.recent[2 - 2 * _HISTORY :], tokens, span)  # no deque: 760 B

        if not state.flagged & _SPIRAL:
            if state.run >= limits["steps"] and tokens >= limits["min_input_tokens"]:
                title = (
                    f"input tokens grew ×{factor:g} or more on {state.run} LLM steps in a row, "
                    f"to {tokens:,}"
                )
                why = explain(
                    why=f"{state.run} LLM steps in a row each sent ×{factor:g} or more the input"
                    f" tokens of the one before, to {tokens:,} (the rule fires at"
                    f" {limits['steps']:g} steps over {limits['min_input_tokens']:,} tokens)",
                    rule="spiral",
                    threshold={
                        "steps": limits["steps"],
                        "growth_factor": factor,
                        "min_input_tokens": limits["min_input_tokens"],
                    },
                    observed={"steps": state.run, "input_tokens": tokens},
                )
                return self._flag(state, _SPIRAL, "spiral", "SEV2", step, session, title, why)
        if not state.flagged & _NEAR_LIMIT:
            window = int(limits["context_window"] or 0) or context_window(step.model)
            if window and tokens >= limits["context_share"] * window:
                title = f"input tokens {tokens:,} reached {tokens / window:.0%} of the {window:,}-token context window"
                share = limits["context_share"]
                why = explain(
                    why=f"one LLM step sent {tokens:,} input tokens, {tokens / window:.0%} of the"
                    f" model's {window:,}-token context window (the rule fires at {share:.0%})",
                    rule="near_context_limit",
                    threshold=int(share * window),
                    observed=tokens,
                    context_window=window,
                    context_share=share,
                )
                return self._flag(
                    state, _NEAR_LIMIT, "near_context_limit", "SEV3", step, session, title, why
                )
        return None

    def _flag(
        self,
        state: _GrowthState,
        bit: int,
        kind: str,
        severity: str,
        step: Step,
        session: SessionState,
        title: str,
        why: dict,
    ) -> Finding:
        state.flagged |= bit
        override = session.policy.severity.get(self.name)
        recent = state.recent
        growth = tuple(
            {"span_id": _span_text(recent[i + 1]), "input_tokens": recent[i]}
            for i in range(0, len(recent), 2)
        )
        return Finding(
            detector=self.name,
            kind=kind,
            incident_class="semantic",
            severity=override if override in _SEVERITIES else severity,
            title=f"{step.agent or session.agent or step.service}: {title}",
            step=step,
            signature=model_family(step.model) or "unknown",
            evidence=(why, *growth, step.evidence()),
        )
