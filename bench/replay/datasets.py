"""Loaders: public trajectory files -> ``Run``s. Nothing is downloaded here (see bench/README.md).

``load(data_dir)`` walks a directory (a checkout or a directory of files) and recognises:

- tau-bench historical trajectories (``historical_trajectories/*.json``: a list of
  ``{task_id, reward, info, traj, trial}``, ``traj`` in OpenAI chat format with ``tool_calls``);
- SWE-agent trajectories (``*.traj``: ``{trajectory, history, info}``).

Neither records per-call timestamps or per-call token usage, so times are synthesised (stated in
``Run.timed``) and tokens estimated from text length (``Step.tokens_estimated``); SWE-agent's
``info.model_stats.tokens_sent/tokens_received`` totals, when non-zero, rescale the estimates so
the session's totals are the recorded ones.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
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


# --- dispatch -----------------------------------------------------------------------------------


def load(data_dir: Path, limit: int = 0) -> list[Run]:
    """Every run under ``data_dir``, in a stable order; ``limit`` > 0 keeps the first N."""
    runs: list[Run] = []
    for path in sorted(p for p in Path(data_dir).rglob("*") if p.is_file()):
        if path.suffix == ".traj":
            run = load_swe_agent(path, Path(data_dir))
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
