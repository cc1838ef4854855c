"""Placeholder replaced by the ClickHouse-compatible SQL endpoint (port 8123)."""

from __future__ import annotations

from aiohttp import web


def build_sql_app(collector) -> web.Application:
    app = web.Application()
    app.router.add_get("/ping", lambda request: web.Response(text="Ok.\n"))
    return app
