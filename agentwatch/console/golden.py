"""Golden runs in the console: mark a session as known-good, diff an incident's run against it.

- ``POST /sessions/{id}/golden`` (the form on a session's trajectory, admin token): mark it as the
  golden run of its agent and a label, through ``agentwatch.api.golden.mark`` as the API does.
- ``GET /incidents/{id}/golden[?label=][&fragment=1]``: the incident's run against the golden run
  of its agent (the label chosen when the agent has several; else the newest), tool call by tool
  call (``analyzer.trajectory_diff``): the first step where it diverges, argument and result
  differences, token deltas. The incident page loads the fragment into its "golden" section.

Reads the two runs with bounded, parameterised statements through the read-only gate
(``console.data.read``), as every console page does.
"""

from __future__ import annotations

from aiohttp import web

from agentwatch.api.golden import GoldenError, golden_runs, mark
from agentwatch.api.web import collector_of
from agentwatch.console import data
from agentwatch.console import pages as console
from analyzer.incidents.repository import text_value
from analyzer.trajectory_diff import MAX_CALLS, Diff, align, calls_from_steps
from collector.store import StoreError, StoreUnavailable

MAX_STEPS = 3 * MAX_CALLS  # LLM and tool steps read per run (a tool call and a turn or two each)

_TEXT = "leftUTF8({}, 300)"
_RESULT = "coalesce(nullIf(SpanAttributes['gen_ai.tool.call.result'], ''),"
_RESULT += " nullIf(SpanAttributes['output.value'], ''), StatusMessage)"

# A run's LLM turns and tool calls in time order: what the alignment and its table need.
CALLS = f"""
SELECT SpanId, StepKind, ToolName, {_TEXT.format("ToolArgs")} AS args, ToolArgsHash,
       ToolResultHash, InputTokens, OutputTokens,
       StatusCode = 'Error' OR ErrorType != '' AS failed, {_TEXT.format(_RESULT)} AS result
FROM agent_spans
WHERE {data._RUN}
  AND StepKind IN ('llm', 'tool')
ORDER BY Timestamp, SpanId
LIMIT {MAX_STEPS}
"""


def add_golden_pages(app: web.Application) -> None:
    app.router.add_get("/incidents/{id}/golden", golden_diff_page)
    app.router.add_post("/sessions/{id}/golden", mark_golden)


async def run_calls(collector, principal, tenant: str, session: str, trace: str = ""):
    """(calls, span id -> its row) of one run: a session, or a trace when no session is known."""
    rows = await data.read(collector, principal.tenant, CALLS, {
        "tenant": text_value(tenant),
        "by_session": "1" if session else "0",
        "session": text_value(session),
        "trace": text_value(trace),
    })  # fmt: skip
    for row in rows:
        row["failed"] = bool(int(row["failed"]))
    return calls_from_steps(rows), {row["SpanId"]: row for row in rows}


async def golden_diff_page(request: web.Request) -> web.Response:
    session, principal = console._who(request)
    collector = collector_of(request)
    incident = await console._incident(request, principal)
    agent = incident.get("agent") or ""
    runs = await console._stored(golden_runs(collector, incident["tenant"], agent)) if agent else []
    label = request.query.get("label", "")
    chosen = next((r for r in runs if r["label"] == label), runs[0] if runs else None)
    context = {"i": incident, "runs": runs, "golden": chosen, "diff": None, "rows": {},
               "same_run": False, "session": session}  # fmt: skip
    if chosen is not None and chosen["session_id"] == incident.get("session_id"):
        context["same_run"] = True
    elif chosen is not None:
        golden_calls, golden_rows = await console._stored(
            run_calls(collector, principal, incident["tenant"], chosen["session_id"])
        )
        run, run_rows = await console._stored(
            run_calls(
                collector, principal, incident["tenant"],
                incident.get("session_id") or "", incident.get("trace_id") or "",
            )
        )  # fmt: skip
        diff = align(golden_calls, run)
        context |= {"diff": diff, "rows": golden_rows | run_rows,
                    "flagged_step": _flagged_step(diff, incident.get("span_id"))}  # fmt: skip
    template = "golden_diff.html" if request.query.get("fragment") else "golden_page.html"
    return console._render(template, request, context)


def _flagged_step(diff: Diff, span_id: str | None) -> int | None:
    """The aligned step holding the incident's off-rails call, when it is a tool call."""
    return next(
        (n for n, p in enumerate(diff.pairs) if p.run and span_id and p.run.ref == span_id), None
    )


async def mark_golden(request: web.Request) -> web.Response:
    session, form = await console._form(request)
    session_id = request.match_info["id"]
    tenant = form.get("tenant") or ""
    back = f"/sessions/{console._quote(session_id)}" + (
        f"?tenant={console._quote(tenant)}" if tenant else ""
    )
    try:  # console._form let the admin token only (a reader's is refused there)
        row = await mark(
            collector_of(request), None, session_id, form.get("label") or "", session.actor,
            form.get("agent") or "", tenant, (form.get("note") or "").strip(),
        )  # fmt: skip
        session.flash = (
            f"Marked as the golden run of {row['agent']} / {row['label']}: incidents of this"
            " agent are diffed against it."
        )
    except GoldenError as exc:
        session.flash = f"Not marked: {exc}"
    except (StoreError, StoreUnavailable) as exc:
        session.flash = f"Not marked: the store failed ({exc})"
    raise web.HTTPSeeOther(back)
