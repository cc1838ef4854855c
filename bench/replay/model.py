"""The neutral run model every loader produces and the converter consumes.

A ``Run`` is one agent session: its steps (LLM calls and tool calls) with times relative to the
session's start, and the labels a data set (or a stated, derived rule) gives it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

CHARS_PER_TOKEN = 4  # the usual rough estimate when a trajectory records no token usage


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def canonical_args(args) -> str:
    """Tool arguments as canonical JSON (sorted keys, no spaces), whatever they came as."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return json.dumps({"input": args})
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


@dataclass
class Step:
    kind: str  # "llm" or "tool"
    start_s: float  # seconds after the session's start
    end_s: float
    # llm
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    output_text: str = ""
    finish_reason: str = ""
    # tool
    tool: str = ""
    call_id: str = ""
    arguments: str = ""  # canonical JSON
    result: str = ""
    error: str = ""  # error message when the call failed, else ""
    error_type: str = "_OTHER"  # error.type / exception.type when it failed (OTel's fallback)


@dataclass
class Run:
    dataset: str
    session_id: str
    service: str
    agent: str
    provider: str
    model: str
    steps: list[Step]
    user_id: str = ""
    timed: bool = False  # True when the step times come from the trajectory itself
    labels: set[str] = field(default_factory=set)
    meta: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max((s.end_s for s in self.steps), default=0.0)


# --- derived labels ------------------------------------------------------------------------------

LOOP_RUN = 4  # the same call, the same arguments and the same result this many times in a row
LOOP_MAX_PERIOD = 3  # ... or the same cycle of up to this many calls (A B A B ...), likewise

# Tool results or errors that say the tool's backend (not the agent) failed. Conservative: phrases
# that only an infrastructure failure writes.
INFRA_PATTERNS = re.compile(
    r"connection refused|connection reset|connection aborted|name or service not known|"
    r"temporary failure in name resolution|ssl: certificate|certificate verify failed|"
    r"\b50[234] (bad gateway|service unavailable|gateway time-?out)|too many requests|"
    r"rate limit exceeded|read timed out|connect timeout|timed out after \d+|"
    r"execution timed out|command timed out",
    re.IGNORECASE,
)


def derive_labels(run: Run, scan_results: bool = True) -> set[str]:
    """Stated, conservative rules (see bench/README.md):

    - ``loop``: ``LOOP_RUN`` consecutive tool calls with the same tool, the same canonical
      arguments and the same result (nothing changed between them: no progress), or the same
      cycle of up to ``LOOP_MAX_PERIOD`` such calls repeated ``LOOP_RUN`` times in a row;
    - ``infrastructure``: a tool error, or (``scan_results``) a tool result, matching
      ``INFRA_PATTERNS``. Pass ``scan_results=False`` when results are file or code text (a code
      search), where such a phrase is content, not a failure.
    """
    labels: set[str] = set()
    calls: list[tuple[str, str, str, str]] = []
    for step in run.steps:
        if step.kind != "tool":
            continue
        calls.append((step.tool, step.arguments, step.result, step.error))
        for period in range(1, LOOP_MAX_PERIOD + 1):
            tail = calls[-period * LOOP_RUN :]
            if len(tail) == period * LOOP_RUN and tail == tail[-period:] * LOOP_RUN:
                labels.add("loop")
        if INFRA_PATTERNS.search(step.error or "") or (
            scan_results and INFRA_PATTERNS.search(step.result[:4000])
        ):
            labels.add("infrastructure")
    return labels
