"""A tiny support agent instrumented the way real frameworks do it, run as its own process.

The LLM spans come from a real instrumentation of the official ``openai`` SDK (one per
convention); the agent and tool spans are written by hand with that convention's attribute names,
as agent frameworks do. Spans leave through a real OTel SDK OTLP exporter.

    python -m tests.agents.support_agent --convention openinference --exporter grpc \
        --endpoint 127.0.0.1:4317 --openai-base-url http://127.0.0.1:PORT/v1 --session s1
"""

from __future__ import annotations

import argparse
import json

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

CONVENTIONS = ("otel_genai", "openinference", "openllmetry")


def exporter(kind: str, endpoint: str, compression: str | None):
    if kind == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=endpoint,
            insecure=True,
            compression=Compression.Gzip if compression == "gzip" else None,
        )
    if kind == "http-protobuf":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=endpoint + "/v1/traces",
            compression=Compression.Gzip if compression == "gzip" else None,
        )
    if kind == "http-json":
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint + "/v1/traces")
    raise SystemExit(f"unknown exporter {kind}")


def instrument(convention: str, provider: TracerProvider) -> None:
    if convention == "otel_genai":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    elif convention == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor
    else:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    OpenAIInstrumentor().instrument(tracer_provider=provider)


def agent_attributes(convention: str, session: str, user: str) -> dict:
    if convention == "otel_genai":
        return {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "support",
            "gen_ai.conversation.id": session,
            "user.id": user,
        }
    if convention == "openinference":
        return {
            "openinference.span.kind": "AGENT",
            "agent.name": "support",
            "session.id": session,
            "user.id": user,
        }
    return {
        "traceloop.span.kind": "agent",
        "traceloop.entity.name": "support",
        "traceloop.association.properties.session_id": session,
        "traceloop.association.properties.user_id": user,
    }


def tool_attributes(convention: str, name: str, arguments: str) -> dict:
    if convention == "otel_genai":
        return {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.arguments": arguments,
        }
    if convention == "openinference":
        return {"openinference.span.kind": "TOOL", "tool.name": name, "input.value": arguments}
    return {
        "traceloop.span.kind": "tool",
        "traceloop.entity.name": name,
        "traceloop.entity.input": arguments,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--convention", choices=CONVENTIONS, required=True)
    parser.add_argument(
        "--exporter", choices=("grpc", "http-protobuf", "http-json"), default="grpc"
    )
    parser.add_argument("--compression", choices=("none", "gzip"), default="none")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--openai-base-url", required=True)
    parser.add_argument("--session", default="session-1")
    parser.add_argument("--user", default="user-1")
    parser.add_argument("--service", default="support-agent")
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--tool", default="lookup_order", help="the tool the agent offers")
    parser.add_argument("--turns", type=int, default=1, help="tool calls run before the answer")
    parser.add_argument(
        "--no-tool-spans",
        action="store_true",
        help="no hand-written tool spans (as bare model-client instrumentations: LLM spans only)",
    )
    args = parser.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": args.service}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter(args.exporter, args.endpoint, args.compression))
    )
    instrument(args.convention, provider)
    tracer = provider.get_tracer("support-agent")

    import openai

    client = openai.OpenAI(base_url=args.openai_base_url, api_key="test-key", max_retries=0)
    tools = [
        {"type": "function", "function": {"name": args.tool, "parameters": {"type": "object"}}}
    ]
    messages = [{"role": "user", "content": "Where is my order 42?"}]
    with tracer.start_as_current_span(
        "support", attributes=agent_attributes(args.convention, args.session, args.user)
    ):
        for _ in range(args.turns):
            reply = client.chat.completions.create(model=args.model, messages=messages, tools=tools)
            call = reply.choices[0].message.tool_calls[0]
            result = json.dumps({"status": "shipped"})
            if not args.no_tool_spans:
                with tracer.start_as_current_span(
                    f"execute_tool {call.function.name}",
                    attributes=tool_attributes(
                        args.convention, call.function.name, call.function.arguments
                    ),
                ):
                    pass
            messages += [
                reply.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": result},
            ]
        client.chat.completions.create(model=args.model, messages=messages, tools=tools)
    provider.shutdown()
    print("done")


if __name__ == "__main__":
    main()
