"""``agentwatch kill | pause | quarantine | freeze | resume`` and ``agentwatch control
list|check|drill``.

Registered on the main group by ``agentwatch.cli.main`` (``register``), which passes its own client
options and API call so that ``python -m agentwatch.cli.main`` and the console script behave the same.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import click
import requests

from agentwatch.cli.format import echo_rows, format_option, text_table

SCOPE_OPTIONS = ("tenant", "service", "agent", "session", "trace", "user", "tool")

EXAMPLES = """
\b
Scope: --global, or any of --tenant, --service, --agent, --session, --trace, --user, --tool
(combined: all must match; without --tenant, every tenant). --trace stops the run in progress
(32 hex digits; agents check with their current trace id). With --tool, kill and pause open
that tool's circuit (for the agent/service given, or everyone). Agents see the change on their
next check, within a second.
\b
Examples:
  agentwatch pause --agent support --reason "refund loop, INC-42"
  agentwatch pause --session s-81 --incident inc-3f2a9c01b7d4 --reason "looping on refunds"
  agentwatch quarantine --user u-1893 --reason "prompt-injection attempts"
  agentwatch pause --trace 4bf92f3577b34da6a3ce929d0e0e4736 --reason "refund loop mid-run"
  agentwatch pause --tool refund_order --agent support --reason "refunds going to wrong orders"
  agentwatch kill --global --reason "provider outage, stop everything"
  agentwatch resume --agent support --reason "fix deployed"
"""


def _scope_options(fn):
    for name in reversed(SCOPE_OPTIONS):
        metavar = "NAME" if name in ("tenant", "service", "agent", "tool") else "ID"
        fn = click.option(f"--{name}", metavar=metavar, help=f"Only this {name}.")(fn)
    fn = click.option("--global", "everyone", is_flag=True, help="Everyone (no other scope).")(fn)
    return fn


def _scope(everyone: bool, values: dict) -> dict:
    scope = {name: value for name, value in values.items() if value}
    if everyone and scope:
        raise click.UsageError("--global stands alone: drop it, or drop the other scope options")
    if not everyone and not scope:
        raise click.UsageError(
            "say whom: --global for everyone, or"
            " --tenant/--service/--agent/--session/--trace/--user/--tool"
        )
    return scope


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def register(main: click.Group, client_options, api_call) -> None:
    def change_command(name: str, mode: str | None, summary: str):
        @main.command(name, help=summary + "\n" + EXAMPLES)
        @_scope_options
        @click.option("--reason", required=True, help="Why (required; kept in the audit trail).")
        @click.option("--actor", help="Who does it.  [default: your login name]")
        @click.option(
            "--incident",
            metavar="ID",
            help="The incident this is for: the control names it, and the incident's timeline"
            " gets a 'contained' event.",
        )
        @client_options
        def command(everyone, reason, actor, incident, api_url, token, **values):
            scope = _scope(everyone, values)
            body = {"scope": scope, "reason": reason, "actor": _actor(actor)}
            if incident:
                if mode is None:
                    raise click.UsageError(
                        "--incident names what a control was set for: not resume"
                    )
                body["incident"] = incident
            if mode is None:
                out = api_call(api_url, token, "POST", "/v1/control/resume", json=body).json()
                click.echo(f"resumed {out['scope']} (was {out['previous_mode']}): {reason}")
                return
            body["mode"] = (
                "circuit_open" if scope.get("tool") and mode in ("killed", "paused") else mode
            )
            out = api_call(api_url, token, "POST", "/v1/control", json=body).json()
            click.echo(f"{out['mode']} {out['scope']} (was {out['previous_mode']}): {reason}")

        return command

    change_command("kill", "killed", "Kill switch: stop now, in-flight work included.")
    change_command(
        "pause", "paused", "Pause: no new consequential actions or runs; in-flight work drains."
    )
    change_command(
        "quarantine",
        "quarantined",
        "Quarantine one user, session or run (needs --user, --session or --trace).",
    )
    change_command("freeze", "budget_frozen", "Budget freeze: new runs are refused.")
    change_command("resume", None, "Lift the control in force for exactly this scope.")

    @main.group()
    def control() -> None:
        """What containment is in force, and what an agent would be told."""

    @control.command("list")
    @format_option
    @client_options
    def control_list(fmt, api_url, token) -> None:
        """Controls in force: scope, mode, since when, by whom and why."""
        controls = api_call(api_url, token, "GET", "/v1/control").json()["controls"]
        echo_rows(controls, fmt, "nothing in force: every agent is enabled", _control_table)

    @control.command("check")
    @_scope_options
    @client_options
    def control_check(everyone, api_url, token, **values) -> None:
        """What an agent with this context is told (as GET /v1/control/check)."""
        params = {name: value for name, value in values.items() if value}
        out = api_call(api_url, token, "GET", "/v1/control/check", params=params).json()
        click.echo(json.dumps(out, indent=2))

    @control.command("drill", help=DRILL_HELP)
    @click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=1),
        default=60.0,
        show_default=True,
        help="Seconds each collector has to answer 'stopped' (and 'running' after the lift).",
    )
    @click.option("--actor", help="Who runs the drill.  [default: your login name]")
    @click.option(
        "--agent-token",
        envvar="AGENTWATCH_AGENT_TOKEN",
        help="Token the flag checks send, as your agents do (an ingest token).  [default: --token]"
        " The checks go to every url in the registry, which whoever writes to the store can add to:"
        " give them a token that opens nothing else.",
    )
    @format_option
    @client_options
    def control_drill(timeout_s, actor, agent_token, fmt, api_url, token) -> None:
        drill = run_drill(
            lambda method, path, **kw: api_call(api_url, token, method, path, **kw).json(),
            api_url, agent_token or token, timeout_s, _actor(actor),
        )  # fmt: skip
        try:
            api_call(api_url, token, "POST", "/v1/control/drills", json=drill.record())
            recorded = f"recorded in gamedays as drill {drill.drill_id} (scenario kill_switch)"
        except click.ClickException as exc:
            recorded = f"NOT recorded ({exc.message}); the numbers above stand"
        if fmt == "json":
            click.echo(json.dumps({**drill.record(), "recorded": recorded}, indent=2))
        else:
            click.echo(drill.report() + "\n" + recorded)
        if not drill.passed:
            raise SystemExit(1)


def _control_table(controls: list[dict]) -> str:
    rows = [
        (c["scope"], c["mode"], c["since"][:19] + "Z", f"{c['actor']} ({c['source']})",
         c["reason"] + (f" [{c['incident_id']}]" if c["incident_id"] else ""))
        for c in controls
    ]  # fmt: skip
    return text_table(("SCOPE", "MODE", "SINCE", "BY", "WHY"), rows)


# --- the kill-switch drill ------------------------------------------------------------------

DRILL_HELP = """Prove the kill switch: kill a canary no agent uses, time every collector.

\b
Kills agent 'agentwatch-drill-<random>' through this collector, then asks every live
collector sharing the store (GET /v1/collectors) for the canary's agent.enabled flag over
OFREP, as an agent's OpenFeature client would, until each answers 'stopped'; lifts the
control and times 'running' again the same way. Checks that a client set up as the README
says (default false, 0.5 s timeout) stops when its collector is unreachable. Prints the
times and the slowest, records the drill (gamedays), and exits 1 when a collector did
not answer 'stopped' within --timeout (an unreachable one included: its fail-closed agents
stop, but nothing proves that one serves the kill), did not answer 'running' after the lift,
or the client did not fail closed. Needs the admin token (it sets a control).
\b
Examples:
  agentwatch control drill
  agentwatch control drill --timeout 30 --format json --api-url http://agentwatch:8080
"""

#: How often each collector is asked while the drill waits for its answer.
POLL_S = 0.05
#: The agent's client as the README sets it up: an answer within this or the default (False).
CLIENT_TIMEOUT_S = 0.5
FLAG = "agent.enabled"


@dataclass
class CollectorResult:
    collector_id: str
    api_url: str
    status: str = "unreachable"  # stopped | not stopped | unreachable
    stop_s: float | None = None  # from the kill request sent to "stopped" answered
    resume_s: float | None = None  # from the lift sent to "running" answered
    last_answer: str = ""  # the last answer or error seen, for the report


@dataclass
class Drill:
    drill_id: str
    scope: dict
    through: str  # the API the kill went through
    actor: str
    timeout_s: float
    started_at: float  # Unix seconds, when the kill was sent
    client: str  # which flag client was used
    results: list[CollectorResult]
    fail_closed: bool = False
    fail_closed_detail: str = ""

    @property
    def max_stop_s(self) -> float | None:
        times = [r.stop_s for r in self.results]
        return None if not times or None in times else max(times)

    @property
    def max_resume_s(self) -> float | None:
        times = [r.resume_s for r in self.results]
        return None if not times or None in times else max(times)

    @property
    def passed(self) -> bool:
        return (
            bool(self.results)
            and self.max_stop_s is not None
            and self.max_resume_s is not None
            and self.fail_closed
        )

    def record(self) -> dict:
        """The drill as ``POST /v1/control/drills`` stores it."""
        return {
            "drill_id": self.drill_id,
            "started_at": self.started_at,
            "actor": self.actor,
            "agent": self.scope["agent"],
            "scope": ";".join(f"{k}={v}" for k, v in self.scope.items()),
            "timeout_s": self.timeout_s,
            "max_stop_s": self.max_stop_s,
            "max_resume_s": self.max_resume_s,
            "fail_closed": self.fail_closed,
            "passed": self.passed,
            "results": [asdict(r) for r in self.results],
        }

    def report(self) -> str:
        def seconds(value: float | None, result: CollectorResult) -> str:
            if value is not None:
                return f"{value:.2f} s"
            return "unreachable" if result.status == "unreachable" else "no"

        rows = []
        for r in self.results:
            note = ""
            if r.status == "unreachable":
                note = f"no answer in {self.timeout_s:g} s ({r.last_answer})"
                note += ": fail-closed agents of it stop"
            elif r.stop_s is None or r.resume_s is None:
                note = f"last answer: {r.last_answer}"
            rows.append(
                (r.collector_id, r.api_url, seconds(r.stop_s, r), seconds(r.resume_s, r), note)
            )
        table = text_table(
            ("COLLECTOR", "API URL", "STOPPED AFTER", "RUNNING AGAIN AFTER", "NOTE"), rows
        )
        stop, resume = self.max_stop_s, self.max_resume_s
        slowest = (
            f"max: stopped after {stop:.2f} s, running again after {resume:.2f} s"
            if stop is not None and resume is not None
            else f"max: NOT every collector answered within {self.timeout_s:g} s"
        )
        return "\n".join([
            f"kill-switch drill {self.drill_id}: killed {self.record()['scope']} through"
            f" {self.through}; {len(self.results)} live collector(s); client: {self.client}",
            table,
            f"{slowest} (target: containment within 60 s)",
            f"fail-closed: {'yes' if self.fail_closed else 'NO'} ({self.fail_closed_detail})",
            f"result: {'PASSED' if self.passed else 'FAILED'}",
        ])  # fmt: skip


def flag_client(api_url: str, token: str | None, context: dict) -> tuple[Callable[[], str], str]:
    """``check()`` -> ``"stopped"``, ``"running"`` or ``"error: ..."``: the canary's ``agent.enabled``
    as an agent evaluates it (README, "Agents check it"): the OpenFeature SDK's OFREP provider
    with a 0.5 s timeout when installed, else the same OFREP request over plain HTTP. Also
    returns the client's name for the report."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        from openfeature import api as openfeature
        from openfeature.contrib.provider.ofrep import OFREPProvider
        from openfeature.evaluation_context import EvaluationContext
    except ImportError:  # not an agentwatch dependency: the protocol itself, by hand
        session = requests.Session()
        url = api_url.rstrip("/") + f"/ofrep/v1/evaluate/flags/{FLAG}"

        def check_http() -> str:
            try:
                response = session.post(
                    url, json={"context": context}, headers=headers, timeout=CLIENT_TIMEOUT_S
                )
                value = response.json().get("value") if response.status_code == 200 else None
            except (requests.RequestException, ValueError) as exc:
                return f"error: {type(exc).__name__}"
            if not isinstance(value, bool):
                return f"error: HTTP {response.status_code}"
            return "running" if value else "stopped"

        return check_http, "OFREP over HTTP (openfeature-sdk not installed)"

    domain = f"agentwatch-drill:{api_url}:{secrets.token_hex(4)}"
    openfeature.set_provider(
        OFREPProvider(api_url, timeout=CLIENT_TIMEOUT_S, headers_factory=lambda: headers), domain
    )
    client = openfeature.get_client(domain)
    evaluation = EvaluationContext(context.get("session", ""), context)

    def check_sdk() -> str:
        details = client.get_boolean_details(FLAG, False, evaluation)  # fail closed: default False
        if details.error_code is not None:  # the reason, without the URL and stack of causes
            message = (details.error_message or "").rpartition(": ")[2].rstrip("')\"")
            return f"error: {details.error_code} {message[:80]}".strip()
        return "running" if details.value else "stopped"

    return check_sdk, "OpenFeature SDK, OFREP provider"


def _nobody_listens() -> str:
    """An address where nothing listens (a port the OS just gave and took back)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def check_fail_closed(context: dict) -> tuple[bool, str]:
    """Does a client set up as the README says stop when its collector is unreachable?"""
    address = _nobody_listens()
    check, _ = flag_client(address, None, context)
    answer = check()
    stops = answer != "running"
    value = "false" if stops else "true"
    return (
        stops,
        f"a client set up as the README says, against {address}: {FLAG} = {value} ({answer})",
    )


def _wait_for(
    checks: list[Callable[[], str] | None],
    want: str,
    since: float,
    timeout_s: float,
    abort: threading.Event,
) -> list[tuple[float | None, str]]:
    """Ask each check until it answers ``want`` (in parallel): (seconds since ``since``, last answer)."""

    def one(check: Callable[[], str] | None) -> tuple[float | None, str]:
        answer = ""
        if check is None:  # not asked: unreachable already
            return None, answer
        while not abort.is_set():
            answer = check()
            if answer == want:
                return time.monotonic() - since, answer
            if time.monotonic() - since > timeout_s:
                break
            time.sleep(POLL_S)
        return None, answer

    pool = ThreadPoolExecutor(max_workers=max(1, len(checks)))
    try:
        return list(pool.map(one, checks))
    except BaseException:  # Ctrl-C: the threads stop asking, so the lift is not kept waiting
        abort.set()
        raise
    finally:
        pool.shutdown(wait=True)


def _lift_after_failure(lift_control: Callable[[], None]) -> None:
    """Lift the canary while another error propagates; say so if that fails too."""
    try:
        lift_control()
    except click.ClickException as exc:
        click.echo(f"warning: the canary's kill could not be lifted: {exc.message}", err=True)


def run_drill(call, api_url: str, agent_token: str | None, timeout_s: float, actor: str) -> Drill:
    """Kill a canary through ``api_url``, time every live collector, lift it, time again.

    ``call(method, path, json=..., params=...)`` is the CLI's API call (raises ClickException);
    the flag checks send ``agent_token``. The control is lifted whatever happens once it was
    asked for.
    """
    listed = call("GET", "/v1/collectors")
    collectors = listed["collectors"]
    if listed["you"] not in {c["collector_id"] for c in collectors}:  # its heartbeat is late
        collectors.append({"collector_id": listed["you"], "api_url": api_url})
    drill_id = f"killswitch-{secrets.token_hex(4)}"
    canary = f"agentwatch-drill-{drill_id.removeprefix('killswitch-')}"
    scope = {"agent": canary}
    context = {"agent": canary, "session": canary}
    clients = [flag_client(c["api_url"], agent_token, context) for c in collectors]
    checks = [check for check, _ in clients]
    results = [CollectorResult(c["collector_id"], c["api_url"]) for c in collectors]
    for check in checks:  # warm the connections: the times measure the control, not TCP set-up
        check()
    abort = threading.Event()
    reason = f"kill-switch drill {drill_id}: canary agent, no real agent uses it"
    kill = {"mode": "killed", "scope": scope, "reason": reason, "actor": actor}
    lift = {"scope": scope, "reason": f"{reason}: lifted", "actor": actor}

    def lift_control() -> None:
        try:
            call("POST", "/v1/control/resume", json=lift)
        except click.ClickException as exc:
            if "nothing is in force" not in exc.message:
                raise

    started_at, since = time.time(), time.monotonic()
    try:
        call("POST", "/v1/control", json=kill)
    except click.ClickException as exc:
        if not exc.message.startswith("4"):  # not refused: it may have been stored
            _lift_after_failure(lift_control)
        raise
    try:
        for result, (after, answer) in zip(
            results, _wait_for(checks, "stopped", since, timeout_s, abort), strict=True
        ):
            result.stop_s, result.last_answer = after, answer
            result.status = "stopped" if after is not None else (
                "unreachable" if answer.startswith("error") else "not stopped"
            )  # fmt: skip
    except BaseException:  # Ctrl-C while waiting: lift all the same
        _lift_after_failure(lift_control)
        raise
    lifted_since = time.monotonic()
    lift_control()
    # an unreachable collector is not waited for twice: it answers neither
    reachable = [
        None if r.status == "unreachable" else c for r, c in zip(results, checks, strict=True)
    ]
    for result, (after, answer) in zip(
        results, _wait_for(reachable, "running", lifted_since, timeout_s, abort), strict=True
    ):
        result.resume_s = after
        if after is None and answer:
            result.last_answer = answer
    fail_closed, detail = check_fail_closed(context)
    client_name = clients[0][1]
    return Drill(drill_id, scope, api_url, actor, timeout_s, started_at, client_name, results,
                 fail_closed, detail)  # fmt: skip
