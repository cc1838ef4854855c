"""Which receivers page for an incident: Alertmanager's route tree and silences, over incident labels.

Pure decisions, no I/O (the grouping and silence stages act on them). An incident is a label
set (``labels_of``); a route matches when all its matchers do; the tree is walked as Alertmanager
walks it: the root always matches, the first matching child wins unless it says ``continue``, and
a route with no matching child is the one used. A silence mutes an incident whose labels match all
of its matchers while it is active.

Regexes are RE2's (``analyzer.user_regex``), anchored as Alertmanager anchors them: matching is
linear in the label's length, and a pattern RE2 refuses is refused when the silence or route is
given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from analyzer.incidents.model import IncidentRecord
from analyzer.user_regex import RegexError, compile_regex, escape

# Labels a route or a silence may match on.
LABELS = ("severity", "class", "detector", "kind", "agent", "service", "tenant", "drill")
SILENCE_LABELS = (*LABELS, "fingerprint", "incident_id")
_MATCHER = re.compile(r"^\s*([a-z_]+)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


def labels_of(incident: IncidentRecord) -> dict[str, str]:
    """An incident's labels (what routes and silences match), named as in ``LABELS``.

    ``drill`` is ``true`` for a gameday drill's incident and empty otherwise, as Alertmanager
    treats a label an alert lacks: a route matching ``drill: true`` takes the drills, one matching
    ``drill!=true`` the rest, and a production alert's label set is unchanged.
    """
    return {
        "severity": incident.severity,
        "class": incident.incident_class,
        "detector": incident.detector,
        "kind": incident.kind,
        "agent": incident.agent,
        "service": incident.service,
        "tenant": incident.tenant,
        "drill": "true" if incident.drill else "",
        "fingerprint": incident.fingerprint,
        "incident_id": incident.incident_id,
    }


@dataclass(frozen=True)
class Matcher:
    """``name=value``, ``name!=value``, ``name=~regex`` or ``name!~regex`` (regex anchored)."""

    name: str
    op: str
    value: str
    regex: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):  # user patterns were length-checked by parse_matcher/config
            object.__setattr__(self, "regex", compile_regex(self.value, max_chars=None))

    def matches(self, labels: dict[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.regex is not None:
            hit = self.regex.fullmatch(got) is not None
        else:
            hit = got == self.value
        return hit if self.op in ("=", "=~") else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matcher(text: str, allowed: tuple[str, ...] = SILENCE_LABELS) -> Matcher:
    """
    >>> parse_matcher("agent=~support.*")
    Matcher(name='agent', op='=~', value='support.*')
    """
    found = _MATCHER.match(text)
    if not found:
        raise ValueError(f"{text!r}: expected NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX")
    name, op, value = found.groups()
    if name not in allowed:
        raise ValueError(f"{text!r}: can match only on {', '.join(allowed)}")
    if op in ("=~", "!~"):
        try:
            compile_regex(value)
        except RegexError as exc:
            raise ValueError(f"{text!r}: {name}: {exc}") from None
    return Matcher(name, op, value)


@dataclass(frozen=True)
class Route:
    name: str
    receiver: str
    matchers: tuple[Matcher, ...] = ()
    continue_: bool = False
    group_wait_s: float = 30.0
    repeat_interval_s: float = 4 * 3600.0
    routes: tuple[Route, ...] = field(default_factory=tuple)

    def walk(self):
        yield self
        for child in self.routes:
            yield from child.walk()


def build_route(config, parent: Route | None = None, root: bool = True) -> Route:
    """A ``agentwatch.config.RouteConfig`` -> ``Route``; unset settings come from the parent."""
    receiver = config.receiver or (parent.receiver if parent else "")
    matchers = [Matcher(k, "=", v) for k, v in config.match.items() if isinstance(v, str)]
    # a list of values means "any of": one anchored regex
    matchers += [
        Matcher(k, "=~", "|".join(escape(x) for x in v))
        for k, v in config.match.items()
        if not isinstance(v, str)
    ]
    matchers += [Matcher(k, "=~", v) for k, v in config.match_re.items()]
    route = Route(
        name=config.name or ("default" if root else receiver),
        receiver=receiver,
        matchers=() if root else tuple(matchers),
        continue_=config.continue_,
        group_wait_s=_inherit(config.group_wait_s, parent and parent.group_wait_s, 30.0),
        repeat_interval_s=_inherit(
            config.repeat_interval_s, parent and parent.repeat_interval_s, 4 * 3600.0
        ),
    )
    children = tuple(build_route(c, route, root=False) for c in config.routes)
    return Route(**{**route.__dict__, "routes": children})


def _inherit(own, inherited, default):
    if own is not None:
        return own
    return inherited if inherited is not None else default


def match_routes(route: Route, labels: dict[str, str]) -> list[Route]:
    """The routes an incident goes to (Alertmanager's ``Route.Match``)."""
    if not all(m.matches(labels) for m in route.matchers):
        return []
    found: list[Route] = []
    for child in route.routes:
        matched = match_routes(child, labels)
        if matched:
            found += matched
            if not child.continue_:
                break
    return found or [route]


@dataclass(frozen=True)
class Silence:
    silence_id: str
    matchers: tuple[Matcher, ...]
    starts_ns: int
    ends_ns: int
    created_by: str = ""
    comment: str = ""

    def active(self, now_ns: int) -> bool:
        return self.starts_ns <= now_ns < self.ends_ns

    def mutes(self, labels: dict[str, str], now_ns: int) -> bool:
        return self.active(now_ns) and all(m.matches(labels) for m in self.matchers)


def silenced_by(silences, labels: dict[str, str], now_ns: int) -> Silence | None:
    return next((s for s in silences if s.mutes(labels, now_ns)), None)
