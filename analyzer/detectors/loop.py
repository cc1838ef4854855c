"""Loop: an agent doing the same thing again and again without progress (semantic, SEV2).

A repeat counts only when nothing changed between the calls (runbooks: "the same tool call more
than three times *without progress*"). The outcome of a call is its ``result_hash`` (the
``ToolResultHash`` column: the tool's result, or for a failed call its error; 0 when the span
records neither). Three shapes, over a session's recent tool calls:

- ``repeated_call``: the same tool with the same canonical arguments *and the same outcome* more
  than ``repeats`` times (default 3 repeats beyond the first) within the last ``window`` tool
  calls, counted back from the newest call and stopped by the first such call whose outcome
  differs (something changed). When no outcome is recorded (0), only back-to-back calls count: any
  other tool call in between (an edit before re-running ``python reproduce_issue.py``) is progress.
  Polling with changing arguments, or the same call whose result changes, is not a loop.
- ``cycle``: the last calls are one short sequence (A→B, A→B→C) repeated ``cycles`` times, each call
  with the same arguments *and outcome* as in the previous repetition.
- ``repeated_failure``: ``failures`` consecutive failed calls of one tool with the same error (the
  same outcome; the arguments may differ: a tool rejecting every spelling of the call with the
  same error is the agent not learning from it, a different error is progress). Failing tools are
  the infrastructure detector's business when the backend fails (5xx, timeouts), this one's when
  the agent keeps sending calls the tool rejects.

Each loop is reported once per session (its incident counts what follows); its evidence is why it
fired (``analyzer.finding.explain``: ``rule``, ``threshold`` and ``observed`` counts, with the
repeated call and whether the outcome was ``identical`` or ``not recorded``), then the flagged
step. The four numbers are ``LoopThresholds``
(defaults there; the constructor takes them as keywords), overridden per agent by policy
``thresholds.loop``; they are read when the session's loop state is created. A policy
``severity`` for ``loop`` replaces SEV2.

>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> sessions, detector = SessionTable(), LoopDetector()
>>> def call(t, tool, args_hash, result_hash):
...     step = Step(t, 1, "acme", "svc", "support", "s1", "u1", "t1", f"span{t}", "", "tool",
...                 tool=tool, args_hash=args_hash, result_hash=result_hash, tool_args='{"q": "x"}')
...     return detector.observe(step, sessions.for_step(step, t), t)
>>> [call(t, "search", 7, result_hash=t) for t in range(1, 6)]  # new results: progress
[None, None, None, None, None]
>>> [call(t, "search", 7, result_hash=99) for t in range(6, 9)]
[None, None, None]
>>> finding = call(9, "search", 7, result_hash=99)  # the fourth identical call and result
>>> finding.kind, finding.signature, finding.step.span_id
('repeated_call', 'search', 'span9')
>>> {k: finding.evidence[0][k] for k in ("rule", "observed", "threshold", "outcome")}
{'rule': 'repeated_call', 'observed': 4, 'threshold': 4, 'outcome': 'identical'}
>>> finding.evidence[0]["why"]
'search called 4 times with the same arguments and the same result (the rule fires at 4)'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.finding import Finding, explain
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.session import SessionState


class LoopThresholds(DetectorThresholds):
    """Thresholds of the loop detector (policy ``thresholds.loop``)."""

    repeats: int = Field(
        3, ge=1, description="identical calls (and results) beyond the first that make a loop"
    )
    window: int = Field(12, ge=2, description="recent tool calls looked at, at least repeats + 1")
    cycles: int = Field(3, ge=2, description="repetitions of an A→B(→C) sequence that make a cycle")
    failures: int = Field(
        3, ge=1, description="consecutive rejected calls of one tool with the same error"
    )


class _LoopState:
    __slots__ = (
        "calls",
        "window",
        "failures",
        "failing_tool",
        "failing_outcome",
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
        # the last ``window`` calls, flat: [tool, args hash, result hash, tool, …], trimmed by hand
        # (a deque's first block alone is ~600 B, and a tuple per call another 56 B)
        self.calls: list = []
        self.window = window
        self.failures = 0
        self.failing_tool = ""
        self.failing_outcome = 0
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
        tool, args_hash, outcome = step.tool, step.args_hash, step.result_hash
        calls = state.calls
        calls += (tool, args_hash, outcome)
        if len(calls) > 3 * state.window:
            del calls[:3]

        if step.failed and not step.systems_failure:
            same = state.failing_tool == tool and state.failing_outcome == outcome
            state.failures = state.failures + 1 if same else 1
            state.failing_tool, state.failing_outcome = tool, outcome
        else:
            state.failures, state.failing_tool, state.failing_outcome = 0, "", 0

        if tool in state.flagged:
            return None  # one loop, one finding: the incident counts what follows
        if state.failures >= state.max_failures:
            title = f"{tool} failed {state.failures} times in a row with the same error"
            why = self._why("repeated_failure", title, step, state.failures, state.max_failures)
            return self._flag(state, "repeated_failure", step, (tool,), title, why)
        # an upper bound in C first; the calls are walked only when it is over the threshold
        if calls[1::3].count(args_hash) > state.repeats:
            repeats = self._repeats(calls, tool, args_hash, outcome)
            if repeats > state.repeats:
                title = f"{tool} called {repeats} times with the same arguments"
                if outcome:
                    title += " and the same result"
                why = self._why("repeated_call", title, step, repeats, state.repeats + 1)
                return self._flag(state, "repeated_call", step, (tool,), title, why)
        cycle = self._cycle(calls, state.cycles)
        if cycle:
            tools = tuple(call[0] for call in cycle)
            title = f"tool calls cycling {'→'.join(tools)} ×{state.cycles}"
            why = self._why("cycle", title, step, state.cycles, state.cycles)
            why["sequence"] = [
                {"tool": c[0], "args_hash": c[1], "result_hash": c[2]} for c in cycle
            ]
            return self._flag(state, "cycle", step, tools, title, why)
        return None

    @staticmethod
    def _repeats(calls: list, tool: str, args_hash: int, outcome: int) -> int:
        """How many calls, the newest included, repeat it without progress (the module's rule)."""
        count = 1
        for i in range(len(calls) - 6, -1, -3):  # the calls before the newest, newest first
            if calls[i + 1] == args_hash and calls[i] == tool:
                if calls[i + 2] != outcome:
                    break  # the same call with another outcome: something changed
                count += 1
            elif not outcome:
                break  # no outcome recorded: another call in between is progress
        return count

    @staticmethod
    def _why(rule: str, title: str, step: Step, count: int, threshold: int) -> dict:
        """Why it fired: the rule, how often against the count at which it fires, the repeated
        call and its outcome."""
        return explain(
            why=f"{title} (the rule fires at {threshold})",
            rule=rule,
            threshold=threshold,
            observed=count,
            tool=step.tool,
            tool_args=step.tool_args,
            args_hash=step.args_hash,
            result_hash=step.result_hash,
            outcome="identical" if step.result_hash else "not recorded",
        )

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
        """The repeated pattern of 2 or 3 distinct calls (tool, args), each with the same outcome
        in every repetition, that ends ``calls``."""
        for period in (2, 3):
            width = 3 * period  # flat entries per repetition
            span = width * cycles
            if len(calls) < span:
                return None  # period 3 needs even more calls
            tail = calls[-span:]
            if tail[width:] != tail[:-width]:  # every repetition equals the one before it
                continue
            pattern = [tuple(tail[i : i + 3]) for i in range(0, width, 3)]
            if len({call[:2] for call in pattern}) == period:  # distinct calls, not one call's
                return tuple(pattern)  # outcomes taking turns (a job's status polled)
        return None

    def _flag(
        self, state: _LoopState, kind: str, step: Step, tools: tuple, title: str, why: dict
    ) -> Finding:
        state.flagged += tuple(t for t in tools if t not in state.flagged)
        return Finding(
            detector=self.name,
            kind=kind,
            incident_class="semantic",
            severity=state.severity,
            title=f"{step.agent or step.service}: {title}",
            step=step,
            signature="→".join(tools),
            evidence=(why, step.evidence()),
        )
