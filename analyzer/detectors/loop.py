"""Loop: an agent doing the same thing again and again without progress (semantic, SEV2).

Three shapes, over a session's recent tool calls:

- ``repeated_call``: the same tool with the same canonical arguments more than ``repeats`` times
  (default 3 repeats beyond the first) within the last ``window`` tool calls. Polling with changing
  arguments is not a loop: the arguments' hash differs.
- ``cycle``: the last calls are one short sequence (A→B, A→B→C) repeated ``cycles`` times.
- ``repeated_failure``: ``failures`` consecutive failed calls of one tool; failing tools are the
  infrastructure detector's business when the backend fails (5xx), this one's when the agent keeps
  sending calls the tool rejects.

Each loop is reported once per session (its incident counts what follows). The four numbers are
``LoopThresholds`` (defaults there; the constructor takes them as keywords), overridden per agent
by policy ``thresholds.loop``; they are read when the session's loop state is created. A policy
``severity`` for ``loop`` replaces SEV2.

>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> sessions, detector = SessionTable(), LoopDetector()
>>> def call(t, tool, args_hash):
...     step = Step(t, 1, "acme", "svc", "support", "s1", "u1", "t1", f"span{t}", "", "tool",
...                 tool=tool, args_hash=args_hash, tool_args='{"q": "x"}')
...     return detector.observe(step, sessions.for_step(step, t), t)
>>> [call(t, "search", 7) for t in range(1, 4)]
[None, None, None]
>>> finding = call(4, "search", 7)
>>> finding.kind, finding.signature, finding.step.span_id
('repeated_call', 'search', 'span4')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.finding import Finding
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.session import SessionState


class LoopThresholds(DetectorThresholds):
    """Thresholds of the loop detector (policy ``thresholds.loop``)."""

    repeats: int = Field(3, ge=1, description="identical calls beyond the first that make a loop")
    window: int = Field(12, ge=2, description="recent tool calls looked at, at least repeats + 1")
    cycles: int = Field(3, ge=2, description="repetitions of an A→B(→C) sequence that make a cycle")
    failures: int = Field(3, ge=1, description="consecutive rejected calls of one tool")


class _LoopState:
    __slots__ = (
        "calls",
        "window",
        "failures",
        "failing_tool",
        "flagged",
        "repeats",
        "cycles",
        "max_failures",
        "severity",
    )

    def __init__(
        self, window: int, repeats: int, cycles: int, failures: int, severity: str = "SEV2"
    ) -> None:
        self.repeats, self.cycles, self.max_failures = repeats, cycles, failures
        self.severity = severity
        # the last ``window`` calls, flat: [tool, args hash, tool, args hash, …], trimmed by hand
        # (a deque's first block alone is ~600 B, and a tuple per call another 56 B)
        self.calls: list = []
        self.window = window
        self.failures = 0
        self.failing_tool = ""
        self.flagged: tuple[str, ...] = ()  # tools already reported in this session (rarely any)


class LoopDetector:
    name = "loop"
    kinds = frozenset({"tool"})  # the engine asks this detector about tool calls only
    thresholds_model = LoopThresholds

    def __init__(self, **thresholds: int) -> None:
        self.thresholds = LoopThresholds(**thresholds)
        self.limits = ResolvedThresholds(self.name, self.thresholds)

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None:
        if step.kind != "tool" or not step.tool:
            return None
        state: _LoopState = session.state(self.name, lambda: self._new_state(session))
        calls = state.calls
        calls += (step.tool, step.args_hash)
        if len(calls) > 2 * state.window:
            del calls[:2]

        if step.failed and not step.systems_failure:
            state.failures = state.failures + 1 if state.failing_tool == step.tool else 1
            state.failing_tool = step.tool
        else:
            state.failures, state.failing_tool = 0, ""

        if step.tool in state.flagged:
            return None  # one loop, one finding: the incident counts what follows
        if state.failures >= state.max_failures:
            title = f"{step.tool} failed {state.failures} times in a row"
            return self._flag(state, "repeated_failure", step, (step.tool,), title)
        tool, args_hash = step.tool, step.args_hash
        repeats = calls[1::2].count(args_hash)  # in C; the tool names are checked only if needed
        if repeats > state.repeats:
            repeats = sum(
                1 for i in range(0, len(calls), 2) if calls[i + 1] == args_hash and calls[i] == tool
            )
        if repeats > state.repeats:
            title = f"{step.tool} called {repeats} times with the same arguments"
            return self._flag(state, "repeated_call", step, (step.tool,), title)
        cycle = self._cycle(calls, state.cycles)
        if cycle:
            tools = tuple(tool for tool, _ in cycle)
            title = f"tool calls cycling {'→'.join(tools)} ×{state.cycles}"
            return self._flag(state, "cycle", step, tools, title)
        return None

    def _new_state(self, session: SessionState) -> _LoopState:
        """The session's loop state, with its agent's thresholds (read once per session)."""
        limits = self.limits(session.policy)
        repeats = int(limits["repeats"])
        return _LoopState(
            max(int(limits["window"]), repeats + 1),
            repeats,
            int(limits["cycles"]),
            int(limits["failures"]),
            session.policy.severity.get(self.name, "SEV2"),
        )

    @staticmethod
    def _cycle(calls: list, cycles: int) -> tuple | None:
        """The repeated (tool, args) pattern of period 2 or 3 that ends ``calls`` (flat list)."""
        for period in (2, 3):
            width = 2 * period  # flat entries per repetition
            span = width * cycles
            if len(calls) < span:
                return None  # period 3 needs even more calls
            tail = calls[-span:]
            if tail[width:] != tail[:-width]:  # every repetition equals the one before it
                continue
            pattern = [(tail[i], tail[i + 1]) for i in range(0, width, 2)]
            if len(set(pattern)) == period:
                return tuple(pattern)
        return None

    def _flag(self, state: _LoopState, kind: str, step: Step, tools: tuple, title: str) -> Finding:
        state.flagged += tuple(t for t in tools if t not in state.flagged)
        return Finding(
            detector=self.name,
            kind=kind,
            incident_class="semantic",
            severity=state.severity,
            title=f"{step.agent or step.service}: {title}",
            step=step,
            signature="→".join(tools),
            evidence=(step.evidence(),),
        )
