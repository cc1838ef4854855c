"""``agentwatch incidents capture|cases|review``: regression cases and post-incident reviews.

Client commands over the API (``agentwatch.api.review``), like the rest of ``incidents``.
"""

from __future__ import annotations

import getpass
import json
import sys
from urllib.parse import quote

import click


def register(incidents: click.Group, client_options, api_call) -> None:
    """Add the commands to the ``incidents`` group (``cli.main`` passes its client helpers)."""

    @incidents.command("capture")
    @click.argument("incident_id", metavar="ID")
    @click.option("--expected", required=True, help="What the agent should have done.")
    @click.option("--actor", help="Who captures it.  [default: your login name]")
    @client_options
    def incidents_capture(incident_id, expected, actor, api_url, token) -> None:
        """Capture incident ID as a regression case: its triggering input, the off-rails step,
        the trajectory and what the agent should have done (capturing again replaces it).

        \b
        Example:
          agentwatch incidents capture inc-3f2a9c1b7d4e \\
            --expected "ask for the order number once, then hand over to a person"
        """
        case = api_call(
            api_url, token, "POST", _path(incident_id, "case"),
            json={"expected": expected, "actor": actor or _login()},
        ).json()  # fmt: skip
        step = case["step_tool"] or case["step_span_id"] or "-"
        click.echo(f"{case['incident_id']}: regression case captured by {case['captured_by']}")
        click.echo(f"  input     {_clip(case['input'] or '(the spans carry no input)', 100)}")
        click.echo(f"  off rails {step}({_clip(case['step_arguments'], 80)})")
        click.echo(f"  expected  {_clip(case['expected'], 100)}")
        click.echo(f"  {case['trajectory_steps']} step(s) kept")

    @incidents.command("cases")
    @click.option(
        "--format", "fmt", type=click.Choice(["jsonl", "langfuse"]), default="jsonl",
        show_default=True,
        help="jsonl: the cases as stored; langfuse: Langfuse dataset items (the body of"
        " POST /api/public/dataset-items, one a line).",
    )  # fmt: skip
    @click.option(
        "--dataset", default="agentwatch-regressions", show_default=True,
        help="Langfuse dataset name (--format langfuse).",
    )  # fmt: skip
    @click.option("--limit", type=click.IntRange(1, 10_000), default=10_000, show_default=True)
    @client_options
    def incidents_cases(fmt, dataset, limit, api_url, token) -> None:
        """Export the regression cases as JSON Lines, newest first.

        \b
        Examples:
          agentwatch incidents cases > cases.jsonl
          agentwatch incidents cases --format langfuse --dataset support-regressions
        """
        params = {"format": fmt, "dataset": dataset, "limit": limit}
        response = api_call(api_url, token, "GET", "/v1/cases", params=params)
        sys.stdout.write(response.text)

    @incidents.command("review")
    @click.argument("incident_id", metavar="ID")
    @click.option(
        "--format", "fmt", type=click.Choice(["text", "json", "diff"]), default="text",
        show_default=True, help="diff: only the suggested policy change (pipe it to `patch POLICY_FILE`).",
    )  # fmt: skip
    @client_options
    def incidents_review(incident_id, fmt, api_url, token) -> None:
        """The post-incident review of ID: what the agent did, why, why the guardrails did not
        catch it, the blast radius, and the guardrail change that prevents a recurrence (a diff
        of the policy file in use)."""
        found = api_call(api_url, token, "GET", _path(incident_id, "review")).json()
        if fmt == "json":
            click.echo(json.dumps(found, indent=2))
            return
        suggestion = found["suggestion"]
        if fmt == "diff":
            click.echo(suggestion["diff"] if suggestion else "", nl=False)
            return
        out = [f"Post-incident review of {found['incident_id']}", ""]
        for number, item in enumerate(found["questions"], 1):
            out.append(f"{number}. {item['question']}")
            out += [f"   {line}" for line in item["answer"]]
            out.append("")
        if suggestion:
            out += ["Suggested policy change:", suggestion["diff"].rstrip("\n")]
        click.echo("\n".join(out))


def _path(incident_id: str, action: str) -> str:
    return f"/v1/incidents/{quote(incident_id, safe='')}/{action}"


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. a container's anonymous uid)
        return "cli"


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
