"""Two-way pagers: an acknowledge or resolve made in PagerDuty or Opsgenie reaches the incident.

- ``POST /v1/webhooks/pagerduty``: a PagerDuty v3 webhook subscription. Signed:
  ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>`` with the subscription's secret
  (several, comma-separated, while PagerDuty rotates it: one match is enough). Event types
  ``incident.acknowledged`` and ``incident.resolved``; any other is answered 200 and ignored.
  The incident is ``event.data.incident_key``; the person ``event.agent.summary``.
- ``POST /v1/webhooks/opsgenie``: an Opsgenie webhook integration. Opsgenie does not sign its
  webhooks, so the integration sends the secret in a custom header, ``X-Agentwatch-Secret``
  (a header, not the URL: URLs end up in access logs). Actions ``Acknowledge`` and ``Close``.
  The incident is ``alert.alias``; the person ``alert.username``.

The secret is the receiver's ``webhook_secret`` (``paging.receivers``); each receiver of the
type with one is tried, and the one that matches is the receiver the change came through. No
valid signature or secret: 401, and nothing changes. These paths are not opened by API tokens
(``server._PATH_ROLES``): the pager's SaaS holds none.

Which incident: our notifiers send the page's incident fingerprint as PagerDuty's
``dedup_key`` and Opsgenie's ``alias``, so the change goes to every open or acknowledged incident
with that fingerprint (one, unless an old one was not adopted after a restart). Incidents
folded into that page (``analyzer.paging.grouping``) are left as they are: acknowledging the
page's incident acknowledges the page already, and each folded finding is its own problem to
resolve. The change goes through the incident desk like ``/v1/incidents/{id}/ack``: actor
``pagerduty:<name>`` or ``opsgenie:<name>`` on the timeline, paging and containment told. Paging
does not send it back to the receiver it came from (``retry_stage.echoes_its_pager``).

Replays change nothing: a webhook for an incident already in that status, resolved, or unknown
is answered 200 with ``changed: []`` (a pager retries anything else).
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
from aiohttp import web

from agentwatch.api.incidents import LOCK
from agentwatch.api.web import collector_of as _collector
from agentwatch.api.web import dumps as _dumps
from agentwatch.api.web import error as _error
from analyzer.engine import IncidentNotStored
from analyzer.incidents.lifecycle import StatusConflict, UnknownIncident
from analyzer.paging.retry_stage import VIA_RECEIVER
from collector.store import StoreError, StoreUnavailable

PAGERDUTY_STATUS = {"incident.acknowledged": "acknowledged", "incident.resolved": "resolved"}
OPSGENIE_STATUS = {"Acknowledge": "acknowledged", "Close": "resolved"}
OPSGENIE_HEADER = "X-Agentwatch-Secret"


def add_pager_webhook_routes(app: web.Application) -> None:
    app.router.add_post("/v1/webhooks/pagerduty", pagerduty_webhook)
    app.router.add_post("/v1/webhooks/opsgenie", opsgenie_webhook)


def pagerduty_signed(body: bytes, header: str, secret: str) -> bool:
    """True if one of the header's ``v1=`` signatures is the body's HMAC-SHA256 with ``secret``.

    >>> sig = hmac.new(b"s3cret", b"{}", hashlib.sha256).hexdigest()
    >>> pagerduty_signed(b"{}", f"v1=0000, v1={sig}", "s3cret")
    True
    >>> pagerduty_signed(b"{}", f"v1={sig}", "other")
    False
    """
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    given = [
        s.strip().removeprefix("v1=") for s in header.split(",") if s.strip().startswith("v1=")
    ]
    return any(hmac.compare_digest(want, s) for s in given)


def _receivers(request: web.Request, kind: str) -> list:
    paging = _collector(request).config.paging
    found = [r for r in (paging.receivers if paging else ()) if r.type == kind]
    return [r for r in found if r.webhook_secret]


async def pagerduty_webhook(request: web.Request) -> web.Response:
    receivers = _receivers(request, "pagerduty")
    if not receivers:
        return _error(404, "no pagerduty receiver has a webhook_secret (README 'Paging')")
    body = await request.read()
    header = request.headers.get("X-PagerDuty-Signature", "")
    receiver = next(
        (r for r in receivers if pagerduty_signed(body, header, r.webhook_secret)), None
    )
    if receiver is None:
        return _error(401, "missing or wrong X-PagerDuty-Signature")
    event = _json(body).get("event")
    if not isinstance(event, dict):
        return _error(400, "expected a PagerDuty v3 webhook: {'event': {...}}")
    status = PAGERDUTY_STATUS.get(event.get("event_type"))
    data, agent = event.get("data"), event.get("agent")
    key = data.get("incident_key") if isinstance(data, dict) else None
    if status is None or not key:
        return web.json_response({"changed": [], "ignored": event.get("event_type")})
    person = agent.get("summary") if isinstance(agent, dict) else None
    where = f"PagerDuty #{data.get('number')}" if data.get("number") else "PagerDuty"
    return await _apply(
        request, receiver.name, key, status, f"pagerduty:{person or 'PagerDuty'}", where
    )


async def opsgenie_webhook(request: web.Request) -> web.Response:
    receivers = _receivers(request, "opsgenie")
    if not receivers:
        return _error(404, "no opsgenie receiver has a webhook_secret (README 'Paging')")
    given = request.headers.get(OPSGENIE_HEADER, "").encode()
    receiver = next(
        (r for r in receivers if hmac.compare_digest(given, r.webhook_secret.encode())), None
    )
    if receiver is None:
        return _error(401, f"missing or wrong {OPSGENIE_HEADER} header")
    doc = _json(await request.read())
    alert = doc.get("alert")
    if not isinstance(alert, dict):
        return _error(400, "expected an Opsgenie webhook: {'action': ..., 'alert': {...}}")
    status, key = OPSGENIE_STATUS.get(doc.get("action")), alert.get("alias")
    if status is None or not key:
        return web.json_response({"changed": [], "ignored": doc.get("action")})
    person = alert.get("username") or "Opsgenie"
    where = f"Opsgenie #{alert['tinyId']}" if alert.get("tinyId") else "Opsgenie"
    return await _apply(request, receiver.name, key, status, f"opsgenie:{person}", where)


def _json(body: bytes) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def _apply(
    request: web.Request, receiver: str, key: str, status: str, actor: str, where: str
) -> web.Response:
    """``status`` for every active incident whose fingerprint is ``key``; a replay is a no-op."""
    collector = _collector(request)
    verb = "acknowledged" if status == "acknowledged" else "resolved"
    reason = f"{verb} in {where} {VIA_RECEIVER.format(receiver)}"
    changed = []
    try:
        async with request.app[LOCK]:
            active = await collector.incident_repository.unresolved()
            for incident in sorted(active, key=lambda i: i.incident_id):
                if incident.fingerprint != key:
                    continue
                try:
                    await collector.incident_desk.set_status(
                        incident.incident_id, status, actor[:200], reason[:2000]
                    )
                except (StatusConflict, UnknownIncident):
                    continue  # already so (a replay, or a person here was first)
                changed.append(incident.incident_id)
    except StoreError as exc:
        return _error(500, f"incident query failed: {exc}")
    except (StoreUnavailable, IncidentNotStored) as exc:
        return _error(503, str(exc))  # the pager retries
    return web.json_response({"changed": changed, "status": status}, dumps=_dumps)
