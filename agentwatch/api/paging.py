"""Paging over HTTP (``agentwatch alerts`` and ``agentwatch silence``), on the API port.

- ``GET    /v1/alerts/outbox?status=unsettled|pending|failed|sent|all&limit=``: outbox rows,
  newest first (``unsettled``, the default, is pending or failed).
- ``POST   /v1/alerts/test`` ``{"route": "NAME"}``: a test page (trigger, then resolve) through
  that route's receiver; 404 for an unknown route, 409 when paging is not configured.
- ``GET    /v1/silences?state=active|expired|all``: silences, newest first.
- ``POST   /v1/silences`` ``{"matchers": ["agent=support"], "duration_s": 3600, "created_by":
  "", "comment": ""}``: 201 and the silence. Matchers as ``routing.parse_matcher`` reads them.
- ``DELETE /v1/silences/{id}``: expire it now (ends_at = now); 404 unknown, 409 already expired.

Silences are rows of ``silences`` (FINAL keeps the newest version), so they work, and outlive a
restart, whether or not this collector pages.
"""

from __future__ import annotations

import re
import time
import uuid

import orjson
from aiohttp import web

from agentwatch.api.web import collector_of as _collector
from agentwatch.api.web import error as _error
from agentwatch.api.web import json_response as _json
from analyzer.incidents.model import utc_text
from analyzer.paging.routing import SILENCE_LABELS, parse_matcher
from analyzer.paging.store import SILENCE_STATES, PagingSql
from collector.store import StoreError, StoreUnavailable

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
OUTBOX_FILTERS = {
    "unsettled": ("pending", "failed"),
    "pending": ("pending",),
    "failed": ("failed",),
    "sent": ("sent",),
    "all": ("pending", "failed", "sent", "skipped", "superseded", "folded"),
}


def add_paging_routes(app: web.Application) -> None:
    app.router.add_get("/v1/alerts/outbox", outbox)
    app.router.add_post("/v1/alerts/test", send_test_page)
    app.router.add_get("/v1/silences", list_silences)
    app.router.add_post("/v1/silences", add_silence)
    app.router.add_delete("/v1/silences/{id}", expire_silence)


def _sql(collector) -> PagingSql:
    """The paging tables of ``collector``'s store (all of paging's SQL is in that class)."""
    return PagingSql(collector.run_store, collector.store)


async def outbox(request: web.Request) -> web.Response:
    status = request.query.get("status", "unsettled")
    if status not in OUTBOX_FILTERS:
        return _error(400, f"'status' must be one of {', '.join(OUTBOX_FILTERS)}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        return _error(400, "'limit' must be an integer from 1 to 1000")
    try:
        rows = await _sql(_collector(request)).outbox_rows(OUTBOX_FILTERS[status], limit)
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"cannot read the outbox: {exc}")
    return _json(rows)


async def send_test_page(request: web.Request) -> web.Response:
    collector = _collector(request)
    pager = getattr(collector, "pager", None)
    if pager is None:
        return _error(409, "paging is not configured (add a `paging` section to the config)")
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("route"), str):
        return _error(400, 'body must be {"route": "NAME"}')
    if body["route"] not in pager.routes:
        return _error(404, f"no route {body['route']!r}; routes: {', '.join(pager.routes)}")
    sent = await pager.enqueue_test(body["route"], str(body.get("note") or ""))
    return _json(
        {
            "route": body["route"],
            "receiver": sent[0].receiver,
            "incident_id": sent[0].incident.incident_id,
            "notifications": [n.notification_id for n in sent],
        },
        status=202,
    )


async def list_silences(request: web.Request) -> web.Response:
    state = request.query.get("state", "active")
    if state not in SILENCE_STATES:
        return _error(400, "'state' must be active, expired or all")
    try:
        rows = await _sql(_collector(request)).silences(state)
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"cannot read silences: {exc}")
    for row in rows:
        row["matchers"] = orjson.loads(row["matchers"])
        row["active"] = bool(row["active"])
    return _json(rows)


async def add_silence(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    usage = '{"matchers": ["agent=support"], "duration_s": 3600, "comment": "..."}'
    if not isinstance(body, dict):
        return _error(400, f"body must be a JSON object: {usage}")
    matchers = body.get("matchers")
    if not isinstance(matchers, list) or not matchers:
        return _error(400, f"'matchers' must be a non-empty list of texts: {usage}")
    try:
        parsed = [parse_matcher(str(m)) for m in matchers]
    except ValueError as exc:
        return _error(400, f"{exc} (labels: {', '.join(SILENCE_LABELS)})")
    duration = body.get("duration_s")
    if not isinstance(duration, int | float) or duration <= 0:
        return _error(400, "'duration_s' must be a positive number of seconds")
    now = time.time_ns()
    row = {
        "silence_id": f"sil-{uuid.uuid4().hex[:12]}",
        "version": now,
        "matchers": orjson.dumps([str(m) for m in parsed]).decode(),
        "starts_at": utc_text(now),
        "ends_at": utc_text(now + int(duration * 1e9)),
        "created_by": str(body.get("created_by") or "api")[:200],
        "comment": str(body.get("comment") or "")[:2000],
    }
    collector = _collector(request)
    try:
        await _sql(collector).put_silence(row)
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"cannot store the silence: {exc}")
    return await _changed(collector, row, 201)


async def expire_silence(request: web.Request) -> web.Response:
    silence_id = request.match_info["id"]
    if not _ID.match(silence_id):  # ours are sil-<hex>: any other text names no silence
        return _error(404, f"no silence {silence_id!r}")
    collector = _collector(request)
    sql = _sql(collector)
    try:
        row = await sql.silence(silence_id)
        if row is None:
            return _error(404, f"no silence {silence_id!r}")
        if not row.pop("active"):
            return _error(409, f"silence {silence_id} has expired already")
        now = time.time_ns()
        row.update(version=max(now, int(row["version"]) + 1), ends_at=utc_text(now))
        row["starts_at"] = row["starts_at"].replace("T", " ").rstrip("Z")
        await sql.put_silence(row)
    except (StoreError, StoreUnavailable) as exc:
        return _error(503, f"cannot expire the silence: {exc}")
    return await _changed(collector, row, 200)


async def _changed(collector, row: dict, status: int) -> web.Response:
    """A silence was stored: the pager takes it up now, and the caller sees it as listed."""
    await _reload(collector)
    row["matchers"] = orjson.loads(row["matchers"])
    del row["version"]
    return _json(row, status=status)


async def _reload(collector) -> None:
    pager = getattr(collector, "pager", None)
    if pager is not None:
        await pager.load_silences()
