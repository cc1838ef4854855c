"""Tool steps from the tool calls a model asked for, for agents that send no tool spans.

Bare OpenLLMetry (``opentelemetry-instrumentation-openai`` without ``traceloop-sdk``),
OpenInference's model-client instrumentations and others emit only the LLM span: the tool calls
exist only in its output messages (the ``OutputToolCalls`` column, ``collector/normalize.py``).
Without tool steps, the loop and out-of-scope detectors would see nothing of such an agent.

The rule (``ToolCallSteps``): an LLM step's requested calls become "tool" steps only while its
``(tenant, service)`` has sent no tool span of its own. The first real tool step stops it for good
(in this process: at most ``MAX_SERVICES`` services are remembered; a restart learns it again from
the replayed steps). A batch is searched for real tool steps before any call is made a step, so a
service whose tool spans come in the same export as its LLM spans is never counted twice. The
double count this allows: a service whose first tool span arrives in a later export than its
first LLM spans has those LLM spans' calls counted from the output *and* from the tool spans,
once (an export is usually a few seconds of spans).

A made step is the call as the model asked for it: the LLM step's trace, session, user, agent and
span id (an incident points at the LLM span), its end time, the tool name, the canonical arguments
and their hash (``ToolArgsHash``'s), no outcome (``result_hash`` 0: the result is never seen), not
failed, no tokens or cost. The loop detector judges calls without an outcome by its "not recorded"
rule: only back-to-back identical calls count, any other call in between is progress
(``analyzer/detectors/loop.py``); so a model asking for the same call four times in a row is a
loop, and one polling a job's status four times in a row with nothing else between is one too (as
for tool spans that record no result).

>>> from analyzer.step import Step
>>> calls = orjson.dumps([{"name": "search", "arguments": '{"q":"x"}', "args_hash": 7}])
>>> llm = Step(10, 5, "acme", "svc", "support", "s1", "u1", "t1", "span1", "", "llm",
...            output_tool_calls=calls.decode())
>>> expand = ToolCallSteps()
>>> [(s.kind, s.tool, s.tool_args, s.args_hash, s.span_id, s.time_ns) for s in expand([llm])]
[('llm', '', '', 0, 'span1', 10), ('tool', 'search', '{"q":"x"}', 7, 'span1', 15)]
>>> real = Step(20, 1, "acme", "svc", "support", "s1", "u1", "t1", "span2", "", "tool",
...             tool="search")
>>> [s.kind for s in expand([llm, real])]  # the service sends tool spans: no more made steps
['llm', 'tool']
"""

from __future__ import annotations

import orjson

from analyzer.step import Step
from collector.normalize import MAX_OUTPUT_TOOL_CALLS, args_hash_of


class ToolCallSteps:
    """Adds tool steps made from LLM steps' requested calls (the module's rule); keeps which
    services send tool spans of their own."""

    #: (tenant, service) pairs remembered as sending tool spans; the oldest is forgotten beyond
    MAX_SERVICES = 100_000

    def __init__(self) -> None:
        self.with_tool_spans: dict[tuple[str, str], None] = {}  # insertion-ordered set

    def __call__(self, steps: list[Step]) -> list[Step]:
        """``steps`` with, after each LLM step of a service without tool spans, its calls."""
        with_tool_spans = self.with_tool_spans
        asked = False
        for step in steps:
            if step.kind == "tool":
                key = (step.tenant, step.service)
                if key not in with_tool_spans:
                    with_tool_spans[key] = None
                    if len(with_tool_spans) > self.MAX_SERVICES:
                        del with_tool_spans[next(iter(with_tool_spans))]
            elif step.output_tool_calls:
                asked = True
        if not asked:
            return steps  # the common case: nothing to add
        out: list[Step] = []
        for step in steps:
            out.append(step)
            if step.output_tool_calls and (step.tenant, step.service) not in with_tool_spans:
                out.extend(requested_tool_steps(step))
        return out


def requested_tool_steps(llm: Step) -> list[Step]:
    """The tool steps an LLM step's ``output_tool_calls`` asked for (the module's shape); [] for
    text that is not a list of calls, and a malformed call is skipped: detection never fails on
    what a span carried."""
    try:
        calls = orjson.loads(llm.output_tool_calls)
    except orjson.JSONDecodeError:
        return []
    if type(calls) is not list:
        return []
    steps = []
    for call in calls[:MAX_OUTPUT_TOOL_CALLS]:
        if type(call) is not dict or type(name := call.get("name")) is not str or not name:
            continue
        args = call.get("arguments")
        args = args if type(args) is str else ""
        args_hash = call.get("args_hash")
        if type(args_hash) is not int or not 0 <= args_hash < 2**64:
            args_hash = args_hash_of(args) if args else 0
        steps.append(
            Step(
                llm.end_ns,
                0,
                llm.tenant,
                llm.service,
                llm.agent,
                llm.session,
                llm.user,
                llm.trace_id,
                llm.span_id,
                llm.parent_span_id,
                "tool",
                tool=name,
                tool_args=args,
                args_hash=args_hash,
                drill=llm.drill,  # a drill's made steps are the drill's too
            )
        )
    return steps
