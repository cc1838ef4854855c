"""What every handler on the API port shares: the collector it serves and the answer shapes.

Errors are ``{"error": "..."}`` with a status; bodies are JSON written by orjson.
"""

from __future__ import annotations

import orjson
from aiohttp import web

COLLECTOR = web.AppKey("collector", object)
#: who sent the request (``collector.auth.Principal``), set by the API's token check
PRINCIPAL = web.RequestKey("principal", object)


def collector_of(request: web.Request):
    """The ``agentwatch.app.Collector`` behind this request's app."""
    return request.app[COLLECTOR]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def json_response(value, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)


def dumps(value) -> str:
    return orjson.dumps(value).decode()
