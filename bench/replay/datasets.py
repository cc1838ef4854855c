"""Loaders: public trajectory files -> ``Run``s. Nothing is downloaded here (see bench/README.md).

``load(data_dir)`` walks a directory (a checkout or a directory of files) and recognises:

- tau-bench historical trajectories (``historical_trajectories/*.json``: a list of
  ``{task_id, reward, info, traj, trial}``, ``traj`` in OpenAI chat format with ``tool_calls``);
- SWE-agent trajectories (``*.traj``: ``{trajectory, history, info}``);
- AutoCodeRover runs (``info.log`` beside ``cost.json`` in a task's output directory).

The first two record no per-call timestamps or per-call token usage, so times are synthesised
(stated in ``Run.timed``) and tokens estimated from text length (``Step.tokens_estimated``);
SWE-agent's ``info.model_stats.tokens_sent/tokens_received`` totals, when non-zero, rescale the
estimates so the session's totals are the recorded ones. AutoCodeRover's log records both: every
model call's real token usage and every line's wall-clock time (to the second).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench.replay.model import Run, Step, canonical_args, derive_labels, estimate_tokens

# --- synthesised timing (used only when a trajectory has no timestamps) ------------------------


def _rng(key: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def llm_seconds(rnd: random.Random, input_tokens: int, output_tokens: int) -> float:
    """Latency of one chat call: ~0.5 s to first token, prefill, ~50 output tokens/s, jitter."""
    return (0.5 + input_tokens / 20_000 + output_tokens / 50) * rnd.uniform(0.8, 1.3)


def tool_seconds(rnd: random.Random) -> float:
    return rnd.uniform(0.05, 0.6)


def _text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = message.get("tool_calls") or []
    return str(content) + (json.dumps(calls) if calls else "")


# --- tau-bench -------------------------------------------------------------------------------------


def load_tau_bench(path: Path) -> Iterator[Run]:
    """One run per entry. ``info.user_id`` of the task becomes the session's user. Domain and
    model come from the file name (``gpt-4o-airline.json``)."""
    stem = path.stem  # e.g. gpt-4o-airline
    model, _, domain = stem.rpartition("-")
    model = {"sonnet-35-new": "claude-3-5-sonnet-20241022"}.get(model, model)
    provider = "anthropic" if model.startswith("claude") else "openai"
    for entry in json.loads(path.read_text()):
        traj = entry.get("traj") or []
        session = f"tau-{domain}-{model}-t{entry.get('task_id')}-r{entry.get('trial', 0)}"
        rnd = _rng(session)
        steps: list[Step] = []
        t = 0.0
        context_chars = 0
        results = {}
        for message in traj:
            if message.get("role") == "tool":
                results[message.get("tool_call_id")] = str(message.get("content") or "")
        for message in traj:
            role = message.get("role")
            if role == "assistant":
                out_text = _text(message)
                in_tok = max(1, context_chars // 4)
                out_tok = estimate_tokens(out_text)
                dur = llm_seconds(rnd, in_tok, out_tok)
                calls = message.get("tool_calls") or []
                steps.append(
                    Step(
                        "llm",
                        t,
                        t + dur,
                        model=model,
                        input_tokens=in_tok,
                        output_tokens=out_tok,
                        tokens_estimated=True,
                        output_text=str(message.get("content") or ""),
                        finish_reason="tool_calls" if calls else "stop",
                    )
                )
                t += dur
                for call in calls:
                    fn = call.get("function") or {}
                    result = results.get(call.get("id"), "")
                    dur = tool_seconds(rnd)
                    # tau-bench's environment catches the tool's exception and returns "Error: …"
                    error = result if result.startswith("Error") else ""
                    steps.append(
                        Step(
                            "tool",
                            t,
                            t + dur,
                            tool=fn.get("name", "?"),
                            call_id=call.get("id", ""),
                            arguments=canonical_args(fn.get("arguments") or "{}"),
                            result=result,
                            error=error,
                        )
                    )
                    t += dur
            elif role == "user" and steps:
                # the simulated customer (an LLM) answers: a pause, not an agent span
                t += 1.0 + estimate_tokens(_text(message)) / 40 * rnd.uniform(0.8, 1.5)
            context_chars += len(_text(message))
        if not steps:
            continue
        user = ((entry.get("info") or {}).get("task") or {}).get("user_id", "")
        run = Run(
            dataset=f"tau-bench/{stem}",
            session_id=session,
            service=f"tau-bench-{domain}",
            agent=f"{domain}-agent",
            provider=provider,
            model=model,
            steps=steps,
            user_id=user,
            timed=False,
            meta={"reward": entry.get("reward"), "task_id": entry.get("task_id")},
        )
        run.labels = derive_labels(run)
        yield run


# --- SWE-agent ----------------------------------------------------------------------------------


def load_swe_agent(path: Path, root: Path) -> Run | None:
    data = json.loads(path.read_text())
    trajectory = data.get("trajectory") or []
    if not trajectory:
        return None
    history = data.get("history") or []
    info = data.get("info") or {}
    stats = info.get("model_stats") or {}
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    session = "swe-" + hashlib.sha1(rel.encode()).hexdigest()[:10] + "-" + path.stem[:40]
    rnd = _rng(session)
    # prompt size before each assistant message, from the history
    prefixes, assistant_msgs, chars = [], [], 0
    for message in history:
        if message.get("role") == "assistant":
            prefixes.append(chars)
            assistant_msgs.append(message)
        chars += len(_text(message))
    in_est = [
        max(1, (prefixes[k] if k < len(prefixes) else chars) // 4) for k in range(len(trajectory))
    ]
    out_est = [estimate_tokens(str(s.get("response") or "")) for s in trajectory]
    sent, received = int(stats.get("tokens_sent") or 0), int(stats.get("tokens_received") or 0)
    in_scale = sent / sum(in_est) if sent else 1.0
    out_scale = received / sum(out_est) if received else 1.0
    replay_config = data.get("replay_config")
    if isinstance(replay_config, str):
        try:
            replay_config = json.loads(replay_config)
        except ValueError:
            replay_config = {}
    configured = ((replay_config or {}).get("agent") or {}).get("model") or {}
    model = configured.get("name") if isinstance(configured, dict) else None
    if not model or model == "replay":
        model = "gpt-4" if "gpt4" in rel else "unknown"
    steps: list[Step] = []
    t = 0.0
    for k, step in enumerate(trajectory):
        in_tok = max(1, round(in_est[k] * in_scale))
        out_tok = max(1, round(out_est[k] * out_scale))
        dur = llm_seconds(rnd, in_tok, out_tok)
        steps.append(
            Step(
                "llm",
                t,
                t + dur,
                model=model,
                input_tokens=in_tok,
                output_tokens=out_tok,
                tokens_estimated=not (sent and received),
                output_text=str(step.get("thought") or ""),
                finish_reason="tool_calls",
            )
        )
        t += dur
        action = str(step.get("action") or "").strip()
        calls = (assistant_msgs[k].get("tool_calls") or []) if k < len(assistant_msgs) else []
        if calls:
            fn = calls[0].get("function") or {}
            tool, args = fn.get("name", "bash"), canonical_args(fn.get("arguments") or "{}")
        else:
            tool = action.split()[0] if action else "noop"
            args = canonical_args({"command": action})
        try:
            dur = float(step.get("execution_time"))
        except (TypeError, ValueError):
            dur = tool_seconds(rnd)
        observation = str(step.get("observation") or "")
        # SWE-agent raises CommandTimeoutError inside and writes this observation instead
        timed_out = "EXECUTION TIMED OUT" in observation
        steps.append(
            Step(
                "tool",
                t,
                t + dur,
                tool=tool,
                call_id=f"call_{k}",
                arguments=args,
                result=observation,
                error=observation[-500:].strip() if timed_out else "",
                error_type="CommandTimeoutError" if timed_out else "_OTHER",
            )
        )
        t += dur
    run = Run(
        dataset="swe-agent/trajectories",
        session_id=session,
        service="swe-agent",
        agent="swe-agent",
        provider="openai",
        model=model,
        steps=steps,
        timed=False,
        meta={
            "path": rel,
            "exit_status": info.get("exit_status"),
            "real_token_totals": bool(sent and received),
        },
    )
    run.labels = derive_labels(run)
    return run


# --- AutoCodeRover -------------------------------------------------------------------------------

_ACR_ENTRY = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ", re.MULTILINE)
_ACR_USAGE = re.compile(r"Model API request cost info: input_tokens=(\d+), output_tokens=(\d+)")
_ACR_CONTENT = re.compile(r"ChatCompletionMessage\(content=('.*?'|\".*?\"), role=", re.DOTALL)


def _acr_entries(text: str) -> list[tuple[float, str]]:
    """``info.log`` as (epoch seconds, message) entries; a message runs to the next time stamp."""
    marks = list(_ACR_ENTRY.finditer(text))
    entries = []
    for k, mark in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        when = datetime.strptime(mark.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        entries.append((when.timestamp(), text[mark.end() : end].rstrip("\n")))
    return entries


def _literal(text: str, default):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return default


def load_auto_code_rover(log: Path, root: Path) -> Run | None:
    """One run per task directory of an AutoCodeRover output (``acr-run-1/<outcome>/<task>_<time>/``).

    Every step has its real times from the log (to the second: a step starts at the log line
    before it) and every model call its real token usage (``Model API request cost info``).
    ``Result of dispatch_intent`` lines are the agent's tool calls, in the order of
    ``tool_call_sequence.json``, which names each call's function and arguments; a search that
    finds nothing (``call_ok`` false) is a normal result, not a failed call. ``Running command``
    lines (installs and test runs of the validating configurations) are ``run_command`` calls.
    """
    entries = _acr_entries(log.read_text(errors="replace"))
    if not entries:
        return None
    task_dir = log.parent
    cost = json.loads((task_dir / "cost.json").read_text())
    sequence_file = task_dir / "tool_call_sequence.json"
    sequence = json.loads(sequence_file.read_text()) if sequence_file.exists() else []
    first = re.search(r"Running task (\S+)", entries[0][1])
    task = first.group(1) if first else task_dir.name.rsplit("_", 2)[0]
    rel = task_dir.relative_to(root) if task_dir.is_relative_to(root) else Path(task_dir.name)
    run_name = task_dir.parent.parent.name or "acr"  # acr-run-1/<outcome>/<task dir>
    model = cost.get("model") or "unknown"
    start, previous = entries[0][0], entries[0][0]
    steps: list[Step] = []
    searches = 0  # dispatch results so far: their index in tool_call_sequence.json
    for k, (at, message) in enumerate(entries):
        usage = _ACR_USAGE.match(message)
        if usage:
            reply = entries[k + 1][1] if k + 1 < len(entries) else ""
            content = _ACR_CONTENT.search(reply)
            text = _literal(content.group(1), "") if content else ""
            steps.append(
                Step(
                    "llm",
                    previous - start,
                    at - start,
                    model=model,
                    input_tokens=int(usage.group(1)),
                    output_tokens=int(usage.group(2)),
                    output_text=str(text)[:4000],
                    finish_reason="stop",
                )
            )
        elif message.startswith("Result of dispatch_intent: "):
            raw = message.removeprefix("Result of dispatch_intent: ")
            outcome = _literal(raw, None)
            result = str(outcome[0]) if isinstance(outcome, tuple) and outcome else raw
            call = sequence[searches] if searches < len(sequence) else {}
            steps.append(
                Step(
                    "tool",
                    previous - start,
                    at - start,
                    tool=call.get("func_name") or "dispatch_intent",
                    call_id=f"call_{len(steps)}",
                    arguments=canonical_args(call.get("arguments") or {}),
                    result=result,
                )
            )
            searches += 1
        elif message.startswith("Running command: "):
            # a shell command (installing, running the tests): it lasts until the next line; its
            # outcome is in the test-suite and fault-localisation lines that follow it
            after = entries[k + 1 :]
            ends = after[0][0] if after else at
            outcome = []
            for _, line in after:
                if not line.startswith(("[Run test-suite]", "SBFL result")):
                    break
                outcome.append(line)
            steps.append(
                Step(
                    "tool",
                    at - start,
                    ends - start,
                    tool="run_command",
                    call_id=f"call_{len(steps)}",
                    arguments=canonical_args(
                        {"command": message.removeprefix("Running command: ")}
                    ),
                    result="\n".join(outcome),
                )
            )
        previous = at
    if not steps:
        return None
    run = Run(
        dataset=f"auto-code-rover/{run_name}",
        session_id=f"acr-{run_name.removeprefix('acr-')}-{task}",
        service="auto-code-rover",
        agent="auto-code-rover",
        provider="openai",
        model=model,
        steps=steps,
        timed=True,
        meta={"path": str(rel), "outcome": task_dir.parent.name},
    )
    # the tools are code searches: their text is source code, where "connection reset" or
    # "timed out" is content, not a failed backend
    run.labels = derive_labels(run, scan_results=False)
    return run


# --- dispatch -----------------------------------------------------------------------------------


def load(data_dir: Path, limit: int = 0) -> list[Run]:
    """Every run under ``data_dir``, in a stable order; ``limit`` > 0 keeps the first N."""
    runs: list[Run] = []
    for path in sorted(p for p in Path(data_dir).rglob("*") if p.is_file()):
        if path.suffix == ".traj":
            run = load_swe_agent(path, Path(data_dir))
            if run:
                runs.append(run)
        elif path.name == "info.log" and (path.parent / "cost.json").is_file():
            run = load_auto_code_rover(path, Path(data_dir))
            if run:
                runs.append(run)
        elif path.suffix == ".json" and path.stat().st_size > 0:
            try:
                head = path.read_text()[:200].lstrip()
            except UnicodeDecodeError:
                continue
            if head.startswith("[") and '"traj"' in path.read_text()[:100_000]:
                runs.extend(load_tau_bench(path))
    seen = set()
    unique = []
    for run in runs:  # the same session id twice (a file copied twice) replays once
        if run.session_id not in seen:
            seen.add(run.session_id)
            unique.append(run)
    return unique[:limit] if limit else unique
