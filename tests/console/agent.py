"""A support agent as the OTel GenAI instrumentation exports it: one invoke_agent span per
session, and per order an LLM turn (model, tokens, finish reason, messages) then a tool call."""

from __future__ import annotations

import json

from opentelemetry.trace import Status, StatusCode

from tests.test_detect_e2e import agent_tracer

#: what the user typed, markup included: the console must show it as text, never run it
QUESTION = "where is my order? <script>window.pwned = 1</script>"


def run_support_agent(
    collector, session: str, user: str, orders: list[int], token: str | None = None
) -> dict[str, list]:
    """Returns the span ids it exported: ``{"llm": [...], "tool": [...]}`` in call order."""
    provider, tracer = agent_tracer(collector, "support-svc", token)
    ids: dict[str, list] = {"llm": [], "tool": []}
    root = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "support",
        "gen_ai.conversation.id": session,
        "user.id": user,
    }
    with tracer.start_as_current_span("invoke_agent support", attributes=root):
        for turn, order in enumerate(orders):
            chat = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 800 + 150 * turn,  # the context grows each turn
                "gen_ai.usage.output_tokens": 40,
                "gen_ai.response.finish_reasons": ["tool_calls"],
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": QUESTION}]}]
                ),
            }
            with tracer.start_as_current_span("chat gpt-4o-mini", attributes=chat) as span:
                ids["llm"].append(format(span.get_span_context().span_id, "016x"))
            call = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": json.dumps({"order_id": order}),
            }
            with tracer.start_as_current_span("execute_tool lookup_order", attributes=call) as span:
                if order == 42:
                    span.set_status(Status(StatusCode.ERROR, "order 42 not found"))
                    span.set_attribute("error.type", "OrderNotFound")
                ids["tool"].append(format(span.get_span_context().span_id, "016x"))
    provider.shutdown()
    return ids
