"""Sessions and traces search, and one session's (or trace's) trajectory, in the console.

- ``GET /sessions?session=&user=&trace=&agent=&service=&since=&until=``: the sessions that match
  every filter given (exact texts; ``since``/``until`` UTC, as a browser's datetime-local sends
  them), most recent first, at most ``MAX_RESULTS``. A trace id no session names still answers,
  with its trace.
- ``GET /sessions/{id}[?tenant=]`` and ``GET /traces/{id}[?tenant=]``: the run step by step
  (``templates/trajectory.html``, as on the incident page), with the "mark as golden" form.

Reads ``session_traces`` (a row per session and trace: user, service, agent, first and last seen)
and ``otel_traces`` with constant, parameterised, bounded statements through the read-only gate
(``console.data.read``), under the viewer's principal: a tenant's reader finds its tenant's only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from aiohttp import web

from agentwatch.api.golden import golden_runs
from agentwatch.api.web import collector_of
from agentwatch.console import data
from agentwatch.console import pages as console
from agentwatch.console.login import may_change
from analyzer.incidents.repository import text_param, text_value

MAX_RESULTS = 100
_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")  # a session or trace id as agents send them


def _maybe(column: str, name: str) -> str:
    """``column`` equals parameter ``name``, unless ``any_<name>`` says the filter is not given."""
    return f"({{any_{name}:UInt8}} = 1 OR {column} = {text_param(name)})"


# The sessions with a trace row matching every filter (by the primary key when a session id is
# given: Tenant, SessionId), then each whole, the filters checked again on the whole session.
SESSIONS = f"""
SELECT Tenant AS tenant, SessionId AS session, max(UserId) AS user_id,
       max(ServiceName) AS service_name, max(AgentName) AS agent_name, count() AS traces,
       toUnixTimestamp64Nano(min(FirstSeen)) AS first_ns,
       toUnixTimestamp64Nano(max(LastSeen)) AS last_ns
FROM session_traces
WHERE {_maybe("Tenant", "tenant")} AND SessionId IN
(
    SELECT SessionId FROM session_traces
    WHERE {_maybe("SessionId", "session")} AND {_maybe("Tenant", "tenant")}
      AND {_maybe("TraceId", "trace")} AND {_maybe("UserId", "user")}
      AND {_maybe("AgentName", "agent")} AND {_maybe("ServiceName", "service")}
      AND LastSeen >= fromUnixTimestamp64Nano({{since_ns:Int64}})
)
GROUP BY Tenant, SessionId
HAVING {_maybe("user_id", "user")} AND {_maybe("agent_name", "agent")}
   AND {_maybe("service_name", "service")}
   AND last_ns >= {{since_ns:Int64}} AND first_ns <= {{until_ns:Int64}}
ORDER BY last_ns DESC, session
LIMIT {MAX_RESULTS + 1}
"""

# A trace no session names (found by its id only).
TRACES = f"""
SELECT Tenant AS tenant, '' AS session, max(UserId) AS user_id, max(ServiceName) AS service_name,
       max(AgentName) AS agent_name, 1 AS traces,
       toUnixTimestamp64Nano(min(Timestamp)) AS first_ns,
       toUnixTimestamp64Nano(max(Timestamp)) AS last_ns
FROM otel_traces
WHERE TraceId = {text_param("trace")} AND {_maybe("Tenant", "tenant")}
GROUP BY Tenant
ORDER BY tenant
LIMIT 10
"""


@dataclass
class Search:
    """What a person asked for; '' is "any"."""

    session: str = ""
    user: str = ""
    trace: str = ""
    agent: str = ""
    service: str = ""
    since: str = ""
    until: str = ""

    @property
    def given(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def params(self, tenant: str = "") -> dict[str, str]:
        """Query parameters of ``SESSIONS`` and ``TRACES``.

        >>> p = Search(user="u-1", since="2026-12-07T05:00").params()
        >>> p["any_user"], p["user"], p["any_session"], p["since_ns"]
        ('0', '752d31', '1', '1796619600000000000')
        """
        out = {"since_ns": str(_ns(self.since, 0)), "until_ns": str(_ns(self.until, 2**62))}
        texts = {name: getattr(self, name) for name in ("session", "user", "trace", "agent")}
        texts |= {"service": self.service, "tenant": tenant}
        for name, value in texts.items():
            out[f"any_{name}"] = "0" if value else "1"
            out[name] = text_value(value)
        return out


def _ns(text: str, default: int) -> int:
    """A datetime-local value (UTC) as nanoseconds; ``default`` when empty.

    >>> _ns("2026-12-07T05:00", 0), _ns("", 7)
    (1796619600000000000, 7)
    >>> _ns("yesterday", 0)
    Traceback (most recent call last):
    ValueError: a time is YYYY-MM-DD HH:MM (UTC), got 'yesterday'
    """
    if not text:
        return default
    try:
        when = datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        raise ValueError(f"a time is YYYY-MM-DD HH:MM (UTC), got {text!r}") from None
    return int(when.replace(tzinfo=when.tzinfo or UTC).timestamp()) * 1_000_000_000


def add_search_pages(app: web.Application) -> None:
    app.router.add_get("/sessions", search_page)
    app.router.add_get("/sessions/{id}", session_page)
    app.router.add_get("/traces/{id}", trace_page)


async def find(collector, principal, search: Search, tenant: str = "") -> list[dict]:
    """Sessions matching ``search`` (at most MAX_RESULTS + 1: one more says "narrow it"), or the
    trace asked for when no session names it."""
    params = search.params(tenant)
    rows = await data.read(collector, principal.tenant, SESSIONS, params)
    if not rows and search.trace:
        rows = await data.read(collector, principal.tenant, TRACES, params)
    for row in rows:
        for name in ("traces", "first_ns", "last_ns"):
            row[name] = int(row[name])
    return rows


async def search_page(request: web.Request) -> web.Response:
    session, principal = console._who(request)
    q = request.query
    search = Search(**{f.name: " ".join(q.get(f.name, "").split())[:256] for f in fields(Search)})
    rows, error = [], ""
    if search.given:
        try:
            rows = await console._stored(find(collector_of(request), principal, search))
        except ValueError as exc:
            error = str(exc)
    context = {"search": search, "rows": rows[:MAX_RESULTS], "more": len(rows) > MAX_RESULTS,
               "limit": MAX_RESULTS, "error": error, "session": session}  # fmt: skip
    return console._render("sessions.html", request, context)


async def session_page(request: web.Request) -> web.Response:
    return await _run_page(request, by_session=True)


async def trace_page(request: web.Request) -> web.Response:
    return await _run_page(request, by_session=False)


async def _run_page(request: web.Request, by_session: bool) -> web.Response:
    session, principal = console._who(request)
    collector = collector_of(request)
    run_id = request.match_info["id"]
    if not _ID.match(run_id):
        raise web.HTTPNotFound(text="no such session or trace")
    asked = Search(session=run_id) if by_session else Search(trace=run_id)
    tenant = principal.tenant or request.query.get("tenant", "")
    found = await console._stored(find(collector, principal, asked, tenant))
    if not found or (not by_session and found[0]["session"]):
        what = "session" if by_session else "trace"
        if found:  # the trace belongs to a session: show the whole session
            raise web.HTTPSeeOther(
                f"/sessions/{console._quote(found[0]['session'])}"
                f"?tenant={console._quote(found[0]['tenant'])}"
            )
        raise web.HTTPNotFound(text=f"no stored spans of {what} {run_id}")
    about = found[0]
    run = {"tenant": about["tenant"], "session_id": about["session"],
           "trace_id": "" if by_session else run_id, "span_id": ""}  # fmt: skip
    trajectory = await console._stored(data.trajectory(collector, principal, run))
    golden = [
        g
        for g in await console._stored(golden_runs(collector, about["tenant"]))
        if by_session and g["session_id"] == run_id
    ]
    flash, session.flash = session.flash, ""
    context = {
        "about": about,
        "by_session": by_session,
        "run_label": ("session " if by_session else "trace ") + run_id,
        "steps": trajectory.steps,
        "total_steps": trajectory.total,
        "curve": console.curve(trajectory.steps, None),
        "flagged": None,
        "recent": set(),
        "scroll_to": None,
        "golden_of": golden,
        "can_change": may_change(principal),
        "session": session,
        "flash": flash,
    }
    return console._render("session.html", request, context)
