"""Local HTTP receivers that answer as the SaaS pagers document, for the paging tests.

Each runs an aiohttp server on 127.0.0.1 (its own event loop thread), checks requests against
the vendor's contract and records what it accepted. ``fail_next`` scripts error answers
(status, headers) for the next requests; ``stop``/``start`` take it down and back on the same
port (connection refused in between).

Contracts:
- PagerDuty Events API v2 (https://developer.pagerduty.com/docs/events-api-v2/overview/):
  202 ``{"status": "success", "message": "Event processed", "dedup_key": ...}``; 400
  ``{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}``
  (e.g. routing_key not 32 characters); 429 when throttled; 5xx.
- Opsgenie Alert API (https://docs.opsgenie.com/docs/alert-api): ``Authorization: GenieKey``;
  202 ``{"result": "Request will be processed", "took": ..., "requestId": ...}``; 422 for an
  unprocessable body (e.g. message over 130 characters); 429.
- Slack incoming webhooks (https://api.slack.com/messaging/webhooks#handling_errors): 200 ``ok``;
  400 ``invalid_payload``; 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import orjson
from aiohttp import web


class FakeReceiver:
    def __init__(self) -> None:
        self.accepted: list[dict] = []  # what the vendor took: {"path", "body", "headers", "at"}
        self.requests: list[dict] = []  # every request seen, with the status answered
        self._script: list[tuple[int, dict, str]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *answers: tuple[int, dict, str]) -> None:
        self._script.extend(answers)

    def start(self) -> None:
        async def up():
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(up(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        seen = {
            "path": request.path_qs,
            "raw": raw,
            "headers": dict(request.headers),
            "at": time.monotonic(),
        }
        if self._script:
            status, headers, text = self._script.pop(0)
            self.requests.append({**seen, "status": status})
            return web.Response(status=status, headers=headers, text=text)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        response = self.answer(request, body)
        self.requests.append({**seen, "status": response.status})
        if response.status < 300:
            self.accepted.append({**seen, "body": body})
        return response

    def answer(self, request: web.Request, body) -> web.Response:
        return web.Response(status=200, text="ok")

    def bodies(self, path_part: str = "") -> list:
        return [a["body"] for a in self.accepted if path_part in a["path"]]


class FakePagerDuty(FakeReceiver):
    SEVERITIES = ("critical", "error", "warning", "info")

    def answer(self, request, body) -> web.Response:
        errors = []
        if not isinstance(body, dict):
            errors.append("Event object is invalid JSON")
            body = {}
        if len(str(body.get("routing_key", ""))) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid")
        if action in ("acknowledge", "resolve") and not body.get("dedup_key"):
            errors.append("'dedup_key' is missing")
        if action == "trigger":
            payload = body.get("payload") or {}
            if not payload.get("summary") or len(payload["summary"]) > 1024:
                errors.append("'payload.summary' is missing or longer than 1024")
            if not payload.get("source"):
                errors.append("'payload.source' is missing")
            if payload.get("severity") not in self.SEVERITIES:
                errors.append("'payload.severity' is invalid")
        if errors:
            doc = {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": errors,
            }
            return web.json_response(doc, status=400)
        dedup_key = body.get("dedup_key") or uuid.uuid4().hex
        doc = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        return web.json_response(doc, status=202)


class FakeOpsgenie(FakeReceiver):
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        super().__init__()

    def answer(self, request, body) -> web.Response:
        took = {"took": 0.01, "requestId": str(uuid.uuid4())}
        if request.headers.get("Authorization") != f"GenieKey {self.api_key}":
            return web.json_response({"message": "Could not authenticate", **took}, status=401)
        if not isinstance(body, dict):
            return web.json_response({"message": "Invalid JSON", **took}, status=400)
        if request.path == "/v2/alerts":
            message = body.get("message") or ""
            if not message or len(message) > 130 or len(body.get("alias", "")) > 512:
                return web.json_response(
                    {"message": "Request body is not processable", **took}, status=422
                )
            if body.get("priority", "P3") not in ("P1", "P2", "P3", "P4", "P5"):
                return web.json_response({"message": "Priority is invalid", **took}, status=422)
        elif request.query.get("identifierType") not in ("id", "alias", "tiny"):
            return web.json_response({"message": "identifierType is invalid", **took}, status=422)
        return web.json_response({"result": "Request will be processed", **took}, status=202)


class FakeSlack(FakeReceiver):
    def answer(self, request, body) -> web.Response:
        if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            return web.Response(status=400, text="invalid_payload")
        for block in body.get("blocks") or []:
            if len((block.get("text") or {}).get("text", "")) > 3000:
                return web.Response(status=400, text="invalid_blocks")
        return web.Response(status=200, text="ok")
