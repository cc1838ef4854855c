"""A local stand-in for the OpenAI Chat Completions API (the remote SaaS we cannot reach here).

It honours the documented contract closely enough for the official ``openai`` SDK and its
instrumentations: ``POST /v1/chat/completions`` returns a completion with ``usage``; a model name
containing ``ratelimit`` answers 429 with ``Retry-After`` (as OpenAI does), ``servererror`` 500.
Given tools, the model asks for the first one until a tool result is in the messages; a model name
containing ``loop`` asks for it again after every result (an agent stuck in a loop).
Requests are recorded so tests can assert what the agent sent.
"""

from __future__ import annotations

import threading
import time

from aiohttp import web


def build_app(calls: list) -> web.Application:
    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append(body)
        model = body.get("model", "")
        if "ratelimit" in model:
            return web.json_response(
                {
                    "error": {
                        "message": "Rate limit reached",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                },
                status=429,
                headers={"Retry-After": "0"},
            )
        if "servererror" in model:
            return web.json_response(
                {"error": {"message": "The server had an error", "type": "server_error"}},
                status=500,
            )
        wants_tool = bool(body.get("tools")) and (
            "loop" in model or not any(m.get("role") == "tool" for m in body.get("messages", []))
        )
        message = {
            "role": "assistant",
            "content": None if wants_tool else "Your order ships tomorrow.",
        }
        if wants_tool:
            message["tool_calls"] = [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": body["tools"][0]["function"]["name"],
                        "arguments": '{"order_id": 42}',
                    },
                }
            ]
        prompt_tokens = 40 * len(body.get("messages", []))
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model + "-2024-08-06" if model == "gpt-4o" else model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if wants_tool else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": 12,
                    "total_tokens": prompt_tokens + 12,
                },
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


class FakeOpenAI:
    """Runs the fake API on a free loopback port in a background thread."""

    def __init__(self) -> None:
        import asyncio

        self.calls: list = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = web.AppRunner(build_app(self.calls), access_log=None)
        asyncio.run_coroutine_threadsafe(self._runner.setup(), self._loop).result(10)
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self._loop).result(10)
        self.port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
