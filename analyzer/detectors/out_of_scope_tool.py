"""Out-of-scope tool: an agent acting outside the scope its policy declares (semantic).

Two kinds, over each tool call:

- ``unlisted_tool``: the tool matches none of the policy's ``allowed_tools`` globs. Silent when the
  policy declares no scope (``allowed_tools is None``). Built-in framework tools (``final_answer``,
  ``transfer_to_*`` …; ``policy.is_builtin``) are never out of scope: the framework calls them,
  not the agent.
- ``argument_outside_scope``: an allowed tool called with arguments outside its
  ``ToolConstraint``, read from the canonical JSON arguments:

  - *path*: path-like string values (under keys such as ``path``, ``file``, ``filename``, ``dir``,
    or values starting with ``/``, ``~``, ``file://`` or containing ``../``) are normalised with
    ``posixpath.normpath`` (so ``/srv/data/../../etc`` is ``/etc``) and must lie under one of
    ``path_prefixes``. A relative path is taken as relative to the tool's own root, assumed to
    be the allowed area: it is flagged only when it climbs out (``data/../../etc`` is ``../etc``),
    or, when prefixes are themselves relative, when it lies under none of them.
  - *host*: URL values (``scheme://…``) and values under host/url keys must name one of
    ``hosts`` exactly or a subdomain of it (``eu.api.example.com`` is under
    ``api.example.com``; ``api.example.com.evil.io`` and ``user@evil.io`` tricks are not).
  - *sql*: a ``query``/``sql``/``statement`` value must start, in every statement and after
    comments, with one of ``sql_verbs``; a ``WITH`` statement is judged by the data verbs it holds
    (``WITH x AS (DELETE …) SELECT`` needs DELETE). ``SELECT 1; DROP TABLE t`` is caught.

  Constraints are keyed by tool name (exact, else the first matching glob). They apply even when
  ``allowed_tools`` is None: a constraint is a declared scope of its own. An unparsable argument
  string is checked as one value.

Severity: SEV1 when the tool is consequential (``policy.is_consequential``: a consequential action
outside scope), else SEV2; a policy ``severity`` override for ``out_of_scope_tool`` wins. A call
is flagged whether or not it succeeded: the attempt is the finding.

Signature: the tool name, plus ``:path``/``:host``/``:sql`` for argument violations. Each signature
is reported once per session (its incident counts what follows). Evidence: why it fired
(``analyzer.finding.explain``: ``rule`` is ``unlisted_tool`` or the constraint, ``path``, ``host``
or ``sql``; ``threshold`` the allowed scope, ``observed`` what the call used), the flagged step,
then the policy's details. State per session: the set of signatures already reported, at most
``max_signatures`` (beyond that a session has opened enough incidents and new signatures are not
reported). The clock is not used.

>>> from analyzer.policy import AgentPolicy, ToolConstraint
>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> policy = AgentPolicy(
...     allowed_tools=("search_docs", "read_file"),
...     tool_constraints={"read_file": ToolConstraint(path_prefixes=("/srv/data",))},
... )
>>> sessions = SessionTable(policy_for=lambda service, agent: policy)
>>> detector = OutOfScopeToolDetector()
>>> def call(t, tool, args):
...     step = Step(t, 1, "acme", "svc", "support", "s1", "u1", "t1", f"span{t}", "", "tool",
...                 tool=tool, tool_args=args)
...     return detector.observe(step, sessions.for_step(step, t), t)
>>> call(1, "search_docs", '{"q":"refunds"}') is None
True
>>> call(2, "read_file", '{"path":"/srv/data/orders.csv"}') is None
True
>>> finding = call(3, "send_email", '{"to":"a@b.c"}')
>>> finding.kind, finding.severity, finding.signature, finding.step.span_id
('unlisted_tool', 'SEV1', 'send_email', 'span3')
>>> finding = call(4, "read_file", '{"path":"/srv/data/../../etc/passwd"}')
>>> finding.kind, finding.severity, finding.signature
('argument_outside_scope', 'SEV2', 'read_file:path')
>>> call(5, "read_file", '{"path":"/etc/shadow"}') is None  # once per session and signature
True
"""

from __future__ import annotations

import json
import posixpath
import re
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.finding import Finding, explain
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.policy import AgentPolicy, ToolConstraint
    from analyzer.session import SessionState

_SEVERITIES = ("SEV1", "SEV2", "SEV3")
_MAX_VALUES = 256  # string values read from one call's arguments; the rest are not checked
_MAX_SHOWN = 200  # characters of an offending value shown in evidence

_PATH_KEYS = frozenset(
    ("path", "file", "filename", "filepath", "file_path", "dir", "directory", "dirname", "folder")
)
_PATH_KEY_ENDINGS = ("path", "_file", "_dir", "filename", "_directory", "_folder")
_HOST_KEYS = frozenset(("host", "hostname", "url", "uri", "endpoint", "domain", "base_url"))
_HOST_KEY_ENDINGS = ("_host", "_url", "_uri", "_domain")
_SQL_KEYS = frozenset(("query", "sql", "statement"))
_SQL_KEY_ENDINGS = ("_sql", "_query")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# SQL noise removed before reading verbs: comments and quoted literals / identifiers
_SQL_NOISE = re.compile(
    r"--[^\n]*|/\*.*?(?:\*/|$)|'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|`[^`]*`?", re.S
)
_SQL_WORD = re.compile(r"[A-Za-z_]+")
_SQL_DATA_VERBS = frozenset(("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE"))


class _ScopeState:
    __slots__ = ("flagged",)

    def __init__(self) -> None:
        self.flagged: set[str] = set()  # signatures already reported in this session


class OutOfScopeToolThresholds(DetectorThresholds):
    """No thresholds: scope comes from ``allowed_tools`` and ``tool_constraints``."""


class OutOfScopeToolDetector:
    name = "out_of_scope_tool"
    kinds = frozenset({"tool"})  # the engine asks this detector about tool calls only
    thresholds_model = OutOfScopeToolThresholds

    def __init__(self, *, max_signatures: int = 64, **thresholds: float) -> None:
        self.thresholds = OutOfScopeToolThresholds(**thresholds)
        self.limits = ResolvedThresholds(self.name, self.thresholds)  # none to read: uniform
        self.max_signatures = max_signatures

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None:
        if step.kind != "tool" or not step.tool:
            return None
        policy = session.policy
        if policy.is_builtin(step.tool):
            return None
        if not policy.allows(step.tool):
            detail = {"allowed_tools": list(policy.allowed_tools or ()), "rule": policy.rule}
            return self._flag(session, "unlisted_tool", step, step.tool, detail)
        constraint = _constraint_for(policy, step.tool)
        if constraint is None:
            return None
        for kind, detail in _violations(constraint, step.tool_args):
            finding = self._flag(
                session, "argument_outside_scope", step, f"{step.tool}:{kind}", detail
            )
            if finding is not None:
                return finding
        return None

    def _flag(
        self, session: SessionState, kind: str, step: Step, signature: str, detail: dict
    ) -> Finding | None:
        state: _ScopeState = session.state(self.name, _ScopeState)
        if signature in state.flagged or len(state.flagged) >= self.max_signatures:
            return None
        state.flagged.add(signature)
        policy = session.policy
        consequential = policy.is_consequential(step.tool)
        severity = policy.severity.get(self.name)
        if severity not in _SEVERITIES:
            severity = "SEV1" if consequential else "SEV2"
        action = "consequential action" if consequential else "tool call"
        if kind == "unlisted_tool":
            title = f"{action} {step.tool} outside the declared scope"
        else:
            title = f"{action} {step.tool} with {detail['constraint']} outside its allowed scope"
        return Finding(
            detector=self.name,
            kind=kind,
            incident_class="semantic",
            severity=severity,
            title=f"{session.agent or step.agent or session.service}: {title}",
            step=step,
            signature=signature,
            evidence=(
                _why(kind, step.tool, detail),
                step.evidence(),
                {"consequential": consequential, **detail},
            ),
        )


def _why(kind: str, tool: str, detail: dict) -> dict:
    """Why it fired: the scope declared (the threshold) and what the call did (observed)."""
    if kind == "unlisted_tool":
        allowed = detail["allowed_tools"]
        listed = ", ".join(allowed[:10]) + (", …" if len(allowed) > 10 else "")
        return explain(
            why=f"{tool} matches none of the tools policy rule {detail['rule']!r} allows"
            f" ({listed or 'none'})",
            rule="unlisted_tool",
            threshold=allowed,
            observed=tool,
        )
    constraint, allowed = detail["constraint"], detail["allowed"]
    observed = detail.get("verbs") or detail.get("host") or detail.get("normalised")
    return explain(
        why=f"{tool} argument {detail['argument'] or '(whole)'} = {detail['value']!r} is outside"
        f" its allowed {constraint} scope ({', '.join(allowed)})",
        rule=constraint,
        threshold=allowed,
        observed=observed if observed is not None else detail["value"],
    )


def _constraint_for(policy: AgentPolicy, tool: str) -> ToolConstraint | None:
    constraints = policy.tool_constraints
    found = constraints.get(tool)
    if found is not None or not constraints:
        return found
    return next((c for pattern, c in constraints.items() if fnmatchcase(tool, pattern)), None)


def _violations(constraint: ToolConstraint, tool_args: str):
    """(constraint kind, evidence) for each argument outside the constraint, lazily."""
    if not (constraint.path_prefixes or constraint.hosts or constraint.sql_verbs):
        return
    for key, value in _string_values(tool_args):
        if constraint.sql_verbs and _is_sql_key(key):
            verbs = _sql_verbs(value)
            allowed = {verb.upper() for verb in constraint.sql_verbs}
            bad = [verb for verb in verbs if verb not in allowed]
            if bad:
                yield "sql", _detail("sql", key, value, constraint.sql_verbs, verbs=bad)
            continue
        is_url = bool(_URL.match(value)) and not value.lower().startswith("file://")
        if is_url or _is_host_key(key):
            if constraint.hosts:
                host = _hostname(value)
                if host is not None and not _host_allowed(host, constraint.hosts):
                    yield "host", _detail("host", key, value, constraint.hosts, host=host)
            if is_url:
                continue  # a URL is never a path (its host is the host check's business)
        if constraint.path_prefixes and _is_path_like(key, value):
            path = _normalise_path(value)
            if not _path_allowed(path, constraint.path_prefixes):
                yield "path", _detail("path", key, value, constraint.path_prefixes, normalised=path)


def _detail(constraint: str, key: str, value: str, allowed: tuple[str, ...], **more) -> dict:
    shown = value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "…"
    return {
        "constraint": constraint,
        "argument": key,
        "value": shown,
        "allowed": list(allowed),
        **more,
    }


def _string_values(tool_args: str) -> list[tuple[str, str]]:
    """(nearest key, value) for each string in the arguments, depth first, at most _MAX_VALUES."""
    try:
        root = json.loads(tool_args) if tool_args else None
    except ValueError:
        return [("", tool_args)]
    out: list[tuple[str, str]] = []
    stack: list[tuple[str, object]] = [("", root)]
    while stack and len(out) < _MAX_VALUES:
        key, node = stack.pop()
        if isinstance(node, str):
            out.append((key, node))
        elif isinstance(node, dict):
            stack.extend((str(k).lower(), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((key, v) for v in reversed(node))
    return out


def _is_path_like(key: str, value: str) -> bool:
    if key in _PATH_KEYS or key.endswith(_PATH_KEY_ENDINGS):
        return bool(value)
    return value.startswith(("/", "~", "file://")) or "../" in value or "..\\" in value


def _normalise_path(value: str) -> str:
    path = value[len("file://") :] if value.lower().startswith("file://") else value
    path = posixpath.normpath(path.replace("\\", "/"))
    if path.startswith(
        "//"
    ):  # normpath keeps a leading '//' (POSIX leaves it implementation-defined)
        path = "/" + path.lstrip("/")
    return path


def _under(path: str, prefix: str) -> bool:
    prefix = _normalise_path(prefix)
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _path_allowed(path: str, prefixes: tuple[str, ...]) -> bool:
    if path.startswith(("/", "~")):
        return any(_under(path, prefix) for prefix in prefixes)
    if path == ".." or path.startswith("../"):
        return False  # climbs out of wherever the tool resolves it
    relative = [prefix for prefix in prefixes if not prefix.startswith(("/", "~"))]
    return not relative or any(_under(path, prefix) for prefix in relative)


def _is_host_key(key: str) -> bool:
    return key in _HOST_KEYS or key.endswith(_HOST_KEY_ENDINGS)


def _hostname(value: str) -> str | None:
    """The host a URL or host value names: None if none ('/v1/x'), '' if unparsable (never allowed)."""
    value = value.strip()
    if not value:
        return None
    try:
        host = urlsplit(value if _URL.match(value) else "//" + value).hostname
    except ValueError:
        return ""
    return None if host is None else host.rstrip(".")


def _host_allowed(host: str, hosts: tuple[str, ...]) -> bool:
    for allowed in hosts:
        allowed = allowed.lower().rstrip(".").removeprefix("*.")
        if host == allowed or (not allowed[-1:].isdigit() and host.endswith("." + allowed)):
            return True
    return False


def _is_sql_key(key: str) -> bool:
    return key in _SQL_KEYS or key.endswith(_SQL_KEY_ENDINGS)


def _sql_verbs(sql: str) -> list[str]:
    """The verb of each statement (comments and quoted text ignored), in order, deduplicated."""
    verbs: list[str] = []
    for statement in _SQL_NOISE.sub(" ", sql).split(";"):
        words = [word.upper() for word in _SQL_WORD.findall(statement)]
        if not words:
            continue
        found = [words[0]]
        if words[0] == "WITH":  # a CTE: judged by the data verbs it holds
            found = [word for word in words if word in _SQL_DATA_VERBS] or found
        verbs.extend(verb for verb in found if verb not in verbs)
    return verbs
