"""Timeline helpers for detector tests: steps at virtual times, fed through a session table."""

from __future__ import annotations

import itertools

from analyzer.session import SessionTable
from analyzer.step import Step

SECOND = 1_000_000_000
_ids = itertools.count(1)


def tool(
    t_s: float,
    name: str,
    args: int = 0,
    session: str = "s1",
    failed: bool = False,
    http_status: int = 0,
    **kw,
) -> Step:
    return Step(
        int(t_s * SECOND), 50_000_000, kw.pop("tenant", "acme"), kw.pop("service", "support-svc"),
        kw.pop("agent", "support"), session, kw.pop("user", "u1"), kw.pop("trace", f"trace-{session}"),
        f"span{next(_ids)}", "", "tool", tool=name, args_hash=args, tool_args=f'{{"a":{args}}}',
        status="Error" if failed else "Ok", http_status=http_status, **kw,
    )  # fmt: skip


def llm(t_s: float, input_tokens: int, output_tokens: int, session: str = "s1", **kw) -> Step:
    return Step(
        int(t_s * SECOND), 400_000_000, kw.pop("tenant", "acme"), kw.pop("service", "support-svc"),
        kw.pop("agent", "support"), session, kw.pop("user", "u1"), kw.pop("trace", f"trace-{session}"),
        f"span{next(_ids)}", "", "llm", model=kw.pop("model", "gpt-4o"), input_tokens=input_tokens,
        output_tokens=output_tokens, status=kw.pop("status", "Ok"), **kw,
    )  # fmt: skip


def run(detector, steps, sessions: SessionTable | None = None) -> list:
    """Feed steps in order (the clock is each step's time); return the findings."""
    sessions = SessionTable() if sessions is None else sessions  # an empty table is falsy
    findings = []
    for step in steps:
        finding = detector.observe(step, sessions.for_step(step, step.time_ns), step.time_ns)
        if finding is not None:
            findings.append(finding)
    return findings


def tool_with_args(t_s: float, name: str, args: dict | str, session: str = "s1", **kw) -> Step:
    """A tool call whose canonical JSON arguments are ``args`` (a dict, or a raw string as is)."""
    import json

    step = tool(t_s, name, session=session, **kw)
    step.tool_args = (
        args if isinstance(args, str) else json.dumps(args, sort_keys=True, separators=(",", ":"))
    )
    return step


def agent_span(
    t_s: float, input_tokens: int, output_tokens: int, session: str = "s1", **kw
) -> Step:
    """An agent span repeating its children's usage (as some frameworks do): kind ``agent``."""
    step = llm(t_s, input_tokens, output_tokens, session, **kw)
    step.kind = "agent"
    return step


def conversation(
    t0_s: float,
    session: str,
    input_tokens: int,
    output_tokens: int,
    steps: int = 3,
    gap_s: float = 2.0,
    **kw,
) -> list[Step]:
    """``steps`` LLM steps of one session, ``gap_s`` apart, each with the same token counts."""
    return [
        llm(t0_s + i * gap_s, input_tokens, output_tokens, session=session, **kw)
        for i in range(steps)
    ]
