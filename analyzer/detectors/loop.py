"""Loop: an agent doing the same thing again and again without progress (semantic, SEV2).

A repeat counts only when nothing changed between the calls (runbooks: "the same tool call more
than three times *without progress*"). The outcome of a call is its ``result_hash`` (the
``ToolResultHash`` column: the tool's result, or for a failed call its error; 0 when the span
records neither). Three shapes, over a session's recent tool calls:

- ``repeated_call``: the same tool with the same canonical arguments *and the same outcome* more
  than ``repeats`` times (default 3 repeats beyond the first) within the last ``window`` tool
  calls, counted back from the newest call and stopped by the first such call whose outcome
  differs (something changed), or by a call in between whose outcome is new in the window (the
  agent learned something since: re-running a search after reading new files is re-checking, not
  looping). The calls a loop alternates with (A→B→A→B, the same results) are flagged with it, so
  one loop is one finding.
  When no outcome is recorded (0), only back-to-back calls count: any other tool call in between
  (an edit before re-running ``python reproduce_issue.py``) is progress.
  Polling with changing arguments, or the same call whose result changes, is not a loop.
- ``cycle``: the last calls are one short sequence (A→B, A→B→C) repeated ``cycles`` times (default
  4: each call "more than three times", as for ``repeated_call``), each call with the same
  arguments *and outcome* as in the previous repetition.

Measured on AutoCodeRover's 600 SWE-bench Lite runs (real per-call timing; ``bench.replay``,
offline, OpenInference): 11 of 594 normal sessions flagged with a repeat counted across new
results and cycles at 3; 7 with the new-result rule; 0 with cycles at 4; all 6 labelled loops
caught each time.
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
>>> finding.title  # reported once, at the fourth call: the loop may go on ("4+")
'support: search called 4+ times with the same arguments and the same result'
>>> call(10, "search", 7, result_hash=99) is None  # one loop, one finding per session
True
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
    cycles: int = Field(
        4,
        ge=2,
        description="repetitions of an A→B(→C) sequence that make a cycle (each call 4 times)",
    )
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
        # A title says "N+ times": the loop is reported at its Nth call, and the incident keeps
        # its first title while the agent may go on (the why keeps the exact count then).
        if state.failures >= state.max_failures:
            seen = f"{tool} failed {state.failures} times in a row with the same error"
            why = self._why("repeated_failure", seen, step, state.failures, state.max_failures)
            title = f"{tool} failed {state.failures}+ times in a row with the same error"
            return self._flag(state, "repeated_failure", step, (tool,), title, why)
        # an upper bound in C first; the calls are walked only when it is over the threshold
        if calls[1::3].count(args_hash) > state.repeats:
            repeats = self._repeats(calls, tool, args_hash, outcome)
            if repeats > state.repeats:
                same = " with the same arguments" + (" and the same result" if outcome else "")
                seen = f"{tool} called {repeats} times{same}"
                why = self._why("repeated_call", seen, step, repeats, state.repeats + 1)
                title = f"{tool} called {repeats}+ times{same}"
                finding = self._flag(state, "repeated_call", step, (tool,), title, why)
                # the calls it alternates with (an A→B→A→B with the same results) are this loop
                # too: flagged with it, so one loop is one finding, not one per tool
                triples = list(zip(calls[0::3], calls[1::3], calls[2::3], strict=True))
                state.flagged += tuple(
                    {t for t, _, o in triples if o and t not in state.flagged}
                    & {t for t, a, o in triples if o and triples.count((t, a, o)) >= state.repeats}
                )
                return finding
        cycle = self._cycle(calls, state.cycles)
        if cycle and not any(call[0] in state.flagged for call in cycle):  # one loop, one finding
            tools = tuple(call[0] for call in cycle)
            seen = f"tool calls cycling {'→'.join(tools)} ×{state.cycles}"
            why = self._why("cycle", seen, step, state.cycles, state.cycles)
            title = f"tool calls cycling {'→'.join(tools)} ×{state.cycles}+"
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
            elif calls[i + 2] and calls[i + 2] not in calls[2:i:3]:
                break  # a call in between learned something new: the repeat re-checks, not loops
        return count

    @staticmethod
    def _why(rule: str, seen: str, step: Step, count: int, threshold: int) -> dict:
        """Why it fired: the rule, how often against the count at which it fires, the repeated
        call and its outcome."""
        return explain(
            why=f"{seen} (the rule fires at {threshold})",
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
