"""``agentwatch runbook``: the on-call runbook of THIS deployment, as Markdown.

The config is loaded as ``agentwatch serve`` loads it (file, ``AGENTWATCH_*`` environment) and the
policy file as the collector reads it; ``facts(config, policy)`` turns them into the few plain
values the template (``agentwatch/runbook/runbook.md.j2``) prints. Only those values reach the
template, never the config itself: tokens, routing keys, API keys, webhook secrets and the
credentials in URLs cannot be printed by a template change. Commands in the runbook take the token
from ``$AGENTWATCH_TOKEN``; ``tests/test_runbook.py`` checks that every ``agentwatch`` command it
prints parses with this CLI.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import click
import jinja2

from agentwatch.config import Config, ConfigError, load_config, redact_url
from analyzer.detectors import REGISTRY
from analyzer.paging.routing import build_route, match_routes
from analyzer.policy import AgentPolicy, Policy, PolicyError, load_policy

TEMPLATES = Path(__file__).resolve().parents[1] / "runbook"
SEVERITIES = ("SEV1", "SEV2", "SEV3")
CLASSES = ("semantic", "infrastructure")
_GLOB = re.compile(r"[*?\[]")


def register(main: click.Group) -> None:
    @main.command()
    @click.option(
        "--config", "config_path", type=click.Path(path_type=Path),
        help="The collector's YAML config (as `agentwatch serve --config`; AGENTWATCH_* too).",
    )  # fmt: skip
    @click.option(
        "--policy", "policy_path", type=click.Path(path_type=Path),
        help="The policy file.  [default: the config's policy_file]",
    )  # fmt: skip
    @click.option(
        "--out", type=click.Path(path_type=Path, dir_okay=False),
        help="Write the Markdown here.  [default: stdout]",
    )  # fmt: skip
    def runbook(config_path: Path | None, policy_path: Path | None, out: Path | None) -> None:
        """Write the on-call runbook of this deployment (Markdown): triage, containment with the
        exact commands and console links for its agents and tools, what to do per failure class,
        and who is paged for what. No secret from the config is printed.

        \b
        Examples:
          agentwatch runbook --config agentwatch.yaml --out RUNBOOK.md
          agentwatch runbook --config agentwatch.yaml --policy policy.yaml
        """
        flags = {"policy_file": policy_path} if policy_path else {}
        try:
            config = load_config(config_path, flags, os.environ)
            policy = load_policy(config.policy_file) if config.policy_file else None
        except (ConfigError, PolicyError) as exc:
            raise click.ClickException(str(exc)) from None
        text = render(facts(config, policy, config_path))
        if out is None:
            click.echo(text, nl=False)
        else:
            out.write_text(text)
            click.echo(f"runbook written to {out}", err=True)


def render(values: dict) -> str:
    """The runbook's Markdown from ``facts``."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,  # a misspelt fact fails loudly, not as a blank
        autoescape=False,  # Markdown, not HTML; every value is ours or shell-quoted by `sh`
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = shell_word
    return env.get_template("runbook.md.j2").render(**values)


def shell_word(value: str) -> str:
    """``value`` as one shell word, quoted only when it needs it (placeholders stay readable).

    >>> shell_word("support"), shell_word("support bot"), shell_word("it's")
    ('support', "'support bot'", '\\'it\\'"\\'"\\'s\\'')
    """
    if re.fullmatch(r"[A-Za-z0-9_.,:/@%+=-]+", value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def facts(config: Config, policy: Policy | None, config_path: Path | None = None) -> dict:
    """The plain values the runbook prints: no token, key, secret or URL credentials."""
    base = console_base(config)
    return {
        "generated_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M}Z",
        "config_source": str(config_path) if config_path else "defaults and AGENTWATCH_*",
        "policy_source": str(config.policy_file) if config.policy_file else "",
        "base": base,
        "store": redact_url(config.clickhouse_url) if config.clickhouse_url else "chDB (embedded)",
        "needs_token": bool(config.api_token) or not config.loopback_only,
        "tenants": sorted(config.tenants),
        "quiet_period_min": round(config.incident_quiet_period_s / 60),
        "agents": agent_rules(policy, base),
        "consequential_regex": consequential_regex(policy),
        "detectors": [{"name": name} for name in REGISTRY],
        "paging": paging(config),
    }


def console_base(config: Config) -> str:
    """Where people open the console and the API: ``public_url`` (else this host and the API
    port, as incident links are made), without any user:password in it."""
    link = config.model_copy(update={"incident_link_template": ""}).link_template(config.api_port)
    base = link.removesuffix("/incidents/{incident_id}").replace("{{", "{").replace("}}", "}")
    parts = urlsplit(base)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def agent_rules(policy: Policy | None, base: str) -> list[dict]:
    """Each policy rule: whom it matches, its tools and what the policy does on its own."""
    if policy is None:
        return []
    spec, builtin = policy.spec, AgentPolicy()
    defaults = spec.defaults
    rules = []
    for index, rule in enumerate(spec.agents):

        def pick(key, rule=rule):
            for layer in (rule, defaults):
                if layer is not None and getattr(layer, key) is not None:
                    return getattr(layer, key)
            return getattr(builtin, key)

        actions = {}
        for layer in (defaults, rule):
            if layer is not None and layer.actions is not None:
                actions.update(layer.actions.model_dump(exclude_none=True))
        budgets = {}
        for layer in (defaults, rule):
            if layer is not None and layer.budgets is not None:
                budgets.update(layer.budgets.model_dump(exclude_none=True))
        service, agent = rule.match.service, rule.match.agent
        consequential = list(pick("consequential_tools"))
        allowed = pick("allowed_tools")
        exact = {"service": _exact(service), "agent": _exact(agent)}
        search = {k: v for k, v in exact.items() if v}
        rules.append({
            "name": policy.rule_name(index),
            "service_glob": service,
            "agent_glob": agent,
            # a glob is not a name the control table knows: the runbook asks for the name then
            "service": exact["service"] or "SERVICE",
            "agent": exact["agent"] or "AGENT",
            "service_is_exact": bool(exact["service"]),
            "agent_is_exact": bool(exact["agent"]),
            "allowed_tools": list(allowed) if allowed is not None else None,
            "consequential_tools": consequential,
            # tools named outright that are consequential: a circuit to open for each
            "risky_tools": sorted(
                {t for t in [*(allowed or []), *consequential]
                 if _exact(t) and _matches(consequential, t)}
            ),
            "budgets": budgets,
            "actions": actions,
            "sessions_link": f"{base}/sessions" + (f"?{urlencode(search)}" if search else ""),
        })  # fmt: skip
    return rules


def _exact(glob: str) -> str:
    return "" if _GLOB.search(glob) else glob


def _matches(patterns: list[str], name: str) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def consequential_regex(policy: Policy | None) -> str:
    """One anchored RE2 pattern for every consequential tool glob any agent has (the defaults'
    or the built-in list, and each rule's own).

    >>> consequential_regex(None)
    '^(send_.*|delete_.*|pay_.*|refund_.*|write_.*|transfer_.*)$'
    """
    defaults = policy.spec.defaults if policy is not None else None
    globs = list(
        defaults.consequential_tools
        if defaults is not None and defaults.consequential_tools is not None
        else AgentPolicy().consequential_tools
    )
    for rule in policy.spec.agents if policy is not None else []:
        globs += [g for g in rule.consequential_tools or [] if g not in globs]
    return "^(" + "|".join(_glob_to_re2(g) for g in globs) + ")$"


def _glob_to_re2(glob: str) -> str:
    """fnmatch's glob as an RE2 fragment: ``*`` any text, ``?`` one character, ``[…]`` a set.

    >>> _glob_to_re2("refund_*"), _glob_to_re2("a.b?[!x]")
    ('refund_.*', 'a\\\\.b.[^x]')
    """
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in glob[i + 1 :]:
            end = glob.index("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)
            body = glob[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def paging(config: Config) -> dict | None:
    """Receivers by name and type (where they send: host only), the route tree, and who is
    paged for each severity and class."""
    if config.paging is None:
        return None
    receivers = {
        r.name: {
            "name": r.name,
            "type": r.type,
            "where": _host(r.url) if r.url else f"{r.type}'s public endpoint",
        }
        for r in config.paging.receivers
    }
    root = build_route(config.paging.route)
    routes: list[dict] = []

    def walk(route, depth: int) -> None:
        routes.append({
            "depth": depth,
            "name": route.name,
            "receiver": route.receiver,
            "receiver_type": receivers[route.receiver]["type"],
            "matchers": [str(m) for m in route.matchers],
            "continue": route.continue_,
            "group_wait_s": route.group_wait_s,
            "repeat_interval_s": route.repeat_interval_s,
        })  # fmt: skip
        for child in route.routes:
            walk(child, depth + 1)

    walk(root, 0)
    other_labels = sorted({m.name for r in root.walk() for m in r.matchers} - {"severity", "class"})
    matrix = []
    for incident_class in CLASSES:
        paged = []
        for severity in SEVERITIES:
            found = match_routes(root, {"severity": severity, "class": incident_class})
            paged.append([_paged(route) for route in found])
        matrix.append({"class": incident_class, "by_severity": paged})
    return {
        "receivers": list(receivers.values()),
        "routes": routes,
        "matrix": matrix,
        "other_labels": other_labels,
    }


def _paged(route) -> str:
    """``pd-oncall``, or ``am (route semantic-to-am)`` when the route has a name of its own."""
    if route.name == route.receiver:
        return route.receiver
    return f"{route.receiver} (route {route.name})"


def _host(url: str) -> str:
    """Scheme and host of a URL: a Slack webhook's path is its secret, a URL may hold a
    password."""
    shown = redact_url(url)
    return shown.replace("/…", "").replace("***@", "")
