"""A failing run against its golden run, tool call by tool call (issue 14, point 4).

On-call's question is "where did this run leave the known-good path?". Both runs are reduced to
their tool calls (name, argument hash, result hash, and the LLM tokens spent to reach each call),
aligned Needleman-Wunsch style so that a repeated or skipped call shows as one extra or missing
step instead of shifting every later step, and each aligned pair says what differs.

Pure: sequences in, an alignment out. No store, no clock, no incidents: the console and the CLI
read the runs and render the result.

>>> golden = [Call("search"), Call("lookup", 1, 10), Call("reply")]
>>> failing = [Call("search"), Call("lookup", 2, 20), Call("lookup", 2, 20), Call("lookup", 2, 20)]
>>> diff = align(golden, failing)
>>> [(p.op, p.golden and p.golden.tool, p.run and p.run.tool) for p in diff.pairs]
... # doctest: +NORMALIZE_WHITESPACE
[('same', 'search', 'search'), ('args', 'lookup', 'lookup'),
 ('changed', 'reply', 'lookup'), ('extra', None, 'lookup')]
>>> diff.first_divergence
1
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CALLS = 400  # calls aligned per run (the table is MAX_CALLS²); the rest are counted, not shown

# scores: a call with the same tool and arguments beats the same tool with other arguments,
# which beats a substitution (another tool at that step), which beats two gaps
SAME_CALL = 3
SAME_TOOL = 2
OTHER_TOOL = -1
GAP = -1


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call of a run. ``tokens``: LLM tokens spent since the previous call (the turns
    that led to this one); ``ref``: the caller's handle on it (a span id)."""

    tool: str
    args_hash: int = 0
    result_hash: int = 0
    tokens: int = 0
    failed: bool = False
    ref: str = ""


@dataclass(frozen=True, slots=True)
class Pair:
    """One step of the alignment: a golden call, the run's call, or both.

    ``op`` is ``same`` (same tool, arguments and result), ``args`` (same tool, other arguments),
    ``result`` (same tool and arguments, another result or a failure), ``changed`` (another tool
    at this step), ``missing`` (a golden call this run did not make) or ``extra`` (a call the
    golden run did not make).
    """

    golden: Call | None
    run: Call | None

    @property
    def op(self) -> str:
        g, r = self.golden, self.run
        if g is None:
            return "extra"
        if r is None:
            return "missing"
        if g.tool != r.tool:
            return "changed"
        if g.args_hash != r.args_hash:
            return "args"
        if g.result_hash != r.result_hash or g.failed != r.failed:
            return "result"
        return "same"

    @property
    def token_delta(self) -> int:
        """The run's tokens to reach this step minus the golden run's (a side absent counts 0)."""
        return (self.run.tokens if self.run else 0) - (self.golden.tokens if self.golden else 0)


@dataclass(frozen=True, slots=True)
class Diff:
    pairs: list[Pair]
    golden_calls: int  # calls in each run, including any beyond MAX_CALLS
    run_calls: int
    golden_tokens: int  # tokens of the calls aligned
    run_tokens: int

    @property
    def first_divergence(self) -> int | None:
        """Index in ``pairs`` of the first step that is not ``same``; None when none differs."""
        return next((i for i, p in enumerate(self.pairs) if p.op != "same"), None)

    @property
    def counts(self) -> dict[str, int]:
        """How many steps of each ``op``.

        >>> align([Call("a"), Call("b")], [Call("a")]).counts
        {'same': 1, 'missing': 1}
        """
        out: dict[str, int] = {}
        for p in self.pairs:
            out[p.op] = out.get(p.op, 0) + 1
        return out

    @property
    def truncated(self) -> bool:
        return self.golden_calls > MAX_CALLS or self.run_calls > MAX_CALLS


def _score(g: Call, r: Call) -> int:
    if g.tool != r.tool:
        return OTHER_TOOL
    return SAME_CALL if g.args_hash == r.args_hash else SAME_TOOL


def align(golden: list[Call], run: list[Call]) -> Diff:
    """The best global alignment of ``run``'s calls against ``golden``'s (first MAX_CALLS each).

    Ties are broken the same way every time: the calls in common first, a golden call missing or
    an extra call after them, so the result is deterministic.

    >>> d = align([Call("a"), Call("b"), Call("c")], [Call("a"), Call("c")])
    >>> [p.op for p in d.pairs], d.first_divergence
    (['same', 'missing', 'same'], 1)
    >>> align([], []).pairs
    []
    """
    g, r = golden[:MAX_CALLS], run[:MAX_CALLS]
    # aligned back to front, then walked front to back preferring a match: on a tie the steps in
    # common come first and the extra or missing calls after them (where a run went astray)
    gb, rb = g[::-1], r[::-1]
    n, m = len(g), len(r)
    # score[i][j]: best score aligning the last i golden calls with the last j calls of the run
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        score[i][0] = i * GAP
    for j in range(1, m + 1):
        score[0][j] = j * GAP
    for i in range(1, n + 1):
        row, above, gi = score[i], score[i - 1], gb[i - 1]
        for j in range(1, m + 1):
            row[j] = max(above[j - 1] + _score(gi, rb[j - 1]), above[j] + GAP, row[j - 1] + GAP)
    pairs: list[Pair] = []
    i, j = n, m
    while i or j:
        if i and j and score[i][j] == score[i - 1][j - 1] + _score(gb[i - 1], rb[j - 1]):
            pairs.append(Pair(gb[i - 1], rb[j - 1]))
            i, j = i - 1, j - 1
        elif i and score[i][j] == score[i - 1][j] + GAP:
            pairs.append(Pair(gb[i - 1], None))
            i -= 1
        else:
            pairs.append(Pair(None, rb[j - 1]))
            j -= 1
    return Diff(
        pairs,
        len(golden),
        len(run),
        sum(c.tokens for c in g),
        sum(c.tokens for c in r),
    )


def calls_from_steps(steps: list[dict]) -> list[Call]:
    """A run's tool calls from its steps in time order (dicts with ``StepKind``, ``ToolName``,
    ``ToolArgsHash``, ``ToolResultHash``, ``InputTokens``, ``OutputTokens``, ``failed`` and
    ``SpanId``): each call carries the LLM tokens spent since the previous call.

    >>> steps = [
    ...     {"StepKind": "llm", "InputTokens": 100, "OutputTokens": 10},
    ...     {"StepKind": "tool", "ToolName": "search", "ToolArgsHash": 7, "SpanId": "s1"},
    ...     {"StepKind": "llm", "InputTokens": 200, "OutputTokens": 20},
    ...     {"StepKind": "tool", "ToolName": "reply", "failed": True, "SpanId": "s2"},
    ... ]
    >>> [(c.tool, c.args_hash, c.tokens, c.failed) for c in calls_from_steps(steps)]
    [('search', 7, 110, False), ('reply', 0, 220, True)]
    """
    calls, tokens = [], 0
    for step in steps:
        tokens += int(step.get("InputTokens") or 0) + int(step.get("OutputTokens") or 0)
        if step.get("StepKind") == "tool":
            calls.append(
                Call(
                    tool=step.get("ToolName") or "",
                    args_hash=int(step.get("ToolArgsHash") or 0),
                    result_hash=int(step.get("ToolResultHash") or 0),
                    tokens=tokens,
                    failed=bool(step.get("failed")),
                    ref=step.get("SpanId") or "",
                )
            )
            tokens = 0
    return calls
