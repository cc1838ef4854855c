"""Recurrence, the release gate's question: has a problem we resolved come back since a time?

- ``GET /v1/incidents/recurrence?since=…&agent=…&service=…&limit=…``: ``{"since": ISO,
  "recurrences": [...]}``, one row per incident first seen at or after ``since`` whose
  fingerprint had an earlier incident resolved (not as a false alarm) before it fired; the row
  names both (``incident_id``, ``fired_again_at``, ``link``; ``resolved_incident_id``,
  ``resolved_at``, ``resolution``). ``since`` is ISO 8601 (UTC unless it carries an offset), a
  duration back from now (``90m``, ``24h``, ``7d``), or a deploy marker (``agentwatch.api.deploys``):
  ``deploy`` (the latest deploy of ``service``/``agent``, one of them required) or
  ``deploy:VERSION``; the answer then names it (``"deploy": {...}``), the check covers that
  deploy's tenant, and a marker naming no deploy is 404. ``limit`` 1–1000 (default 1000).

Read-only: a read token opens it (``/v1/incidents`` in ``server._PATH_ROLES``) and sees its
tenant's incidents only. ``agentwatch recurrence check`` is its client; the SQL is in
``analyzer.incidents.repository`` (``recurrences``).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from aiohttp import web

from agentwatch.api.deploys import NoSuchDeploy, is_marker, since_deploy
from agentwatch.api.web import PRINCIPAL, collector_of, error, json_response
from analyzer.deploys import DeployError
from analyzer.incidents.repository import MAX_LIMIT
from collector.store import StoreError, StoreUnavailable

_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: what the new incident may be filtered on (exact text)
FILTERS = ("agent", "service")


def parse_since(text: str, now_s: float) -> int:
    """``since`` as nanoseconds since the epoch: ISO 8601 (UTC unless an offset is given) or a
    duration back from ``now_s``.

    >>> parse_since("2026-12-07T10:00:00Z", 0), parse_since("2026-12-07 10:00", 0)
    (1796637600000000000, 1796637600000000000)
    >>> parse_since("24h", 1796637600.0) == parse_since("2026-12-06T10:00:00+00:00", 0)
    True
    >>> parse_since("yesterday", 0)
    Traceback (most recent call last):
    ValueError: 'since' is an ISO 8601 time (2026-12-07T10:00:00Z), a duration back from now (90m, 24h, 7d) or deploy[:VERSION], got 'yesterday'
    """
    found = _DURATION.match(text)
    if found:
        return int((now_s - int(found.group(1)) * _UNIT_S[found.group(2)]) * 1e9)
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(
            "'since' is an ISO 8601 time (2026-12-07T10:00:00Z), a duration back from now"
            f" (90m, 24h, 7d) or deploy[:VERSION], got {text[:80]!r}"
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def add_recurrence_routes(app: web.Application) -> None:
    app.router.add_get("/v1/incidents/recurrence", recurrence)  # before /v1/incidents/{id}


async def recurrence(request: web.Request) -> web.Response:
    q = request.query
    if not q.get("since"):
        return error(
            400, "'since' is required: an ISO 8601 time, a duration like 24h, or deploy[:VERSION]"
        )
    reader_tenant = request[PRINCIPAL].tenant if PRINCIPAL in request else None
    repository = collector_of(request).incident_repository
    deploy = None
    try:
        if is_marker(q["since"]):
            deploy = await since_deploy(
                collector_of(request), q["since"], q.get("service", ""), q.get("agent", ""),
                reader_tenant,
            )  # fmt: skip
            since_ns, reader_tenant = deploy["at_ns"], deploy["tenant"]  # that deploy's tenant
        else:
            since_ns = parse_since(q["since"], time.time())
    except (ValueError, DeployError) as exc:
        return error(400, str(exc))
    except NoSuchDeploy as exc:
        return error(404, str(exc))
    except StoreError as exc:
        return error(500, f"deploy query failed: {exc}")
    except StoreUnavailable as exc:
        return error(503, f"store unavailable: {exc}")
    try:
        limit = int(q.get("limit", str(MAX_LIMIT)))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return error(400, f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    labels = tuple((name, q[name]) for name in FILTERS if q.get(name))
    try:
        rows = await repository.recurrences(since_ns, labels, reader_tenant, limit)
    except StoreError as exc:
        return error(500, f"recurrence query failed: {exc}")
    except StoreUnavailable as exc:
        return error(503, f"store unavailable: {exc}")
    since = datetime.fromtimestamp(since_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")
    found = {"since": since, "recurrences": rows}
    return json_response(found | ({"deploy": deploy} if deploy else {}))
