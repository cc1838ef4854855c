"""Containment state: what agents may do now, by scope, served from memory.

A **control** puts one scope in one mode. The scope is any combination of tenant, service, agent,
session, trace, user and tool (none of them: global); it applies to a check whose context has the
same values in the fields the scope names. A trace scope stops the run in progress before its
session is known (with the OTel GenAI instrumentation the session id is on the root span, which
is exported last): the agent checks with its current trace id. A check made with a tenant's token always carries that
tenant, so a control naming one tenant never stops another's agents, and a tenant cannot check
as someone else (policy actions name the incident's tenant). Modes, from least to most restrictive:

- ``budget_frozen``: new runs are refused; work in flight may finish.
- ``quarantined``: this user, session or trace only: no new consequential actions, no new runs.
- ``paused``: no new consequential actions and no new runs; in-flight work drains, state is kept.
- ``killed``: stop now: abort in-flight work too.
- ``circuit_open`` (scopes naming a tool only): that tool may not be called.

A check combines every control that applies: the most restrictive mode wins. Lifting a control
(``resume``) writes mode ``enabled`` for its scope. Changes go to ClickHouse first
(``control_state``, newest version per scope, and ``control_audit``, every change), then into
memory; every second the table is read again, so a change written by another collector sharing
the ClickHouse server is in force here within a second too.

>>> table = ControlTable()
>>> table.put(Control(Scope(agent="support"), "paused", "alice", "person", "runaway refunds"))
>>> table.put(Control(Scope(tool="refund_order"), "circuit_open", "bob", "person", "bad args"))
>>> d = table.decide(Context(agent="support", session="s1", tool="refund_order"))
>>> d.state, d.agent_enabled, d.tool_enabled
('paused', False, False)
>>> d = table.decide(Context(agent="billing", tool="search"))
>>> d.state, d.agent_enabled, d.runs_enabled, d.tool_enabled
('enabled', True, True, True)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from analyzer.incidents.model import utc_text
from collector.store import insert_rows, query_rows

log = logging.getLogger("agentwatch.control")

#: Modes that restrict the agent, least restrictive first (the most restrictive in force wins).
AGENT_MODES = ("budget_frozen", "quarantined", "paused", "killed")
_RANK = {"enabled": 0, **{mode: rank for rank, mode in enumerate(AGENT_MODES, 1)}}
CIRCUIT_OPEN = "circuit_open"
MODES = (*AGENT_MODES, CIRCUIT_OPEN)
SOURCES = ("person", "policy")
#: Scope fields in key order, with their column in ``control_state``.
SCOPE_COLUMNS = {
    "tenant": "tenant",
    "service": "service",
    "agent": "agent",
    "session": "session_id",
    "trace": "trace_id",
    "user": "user_id",
    "tool": "tool",
}
MAX_VALUE_LENGTH = 256
MAX_REASON_LENGTH = 2000


class ControlError(ValueError):
    """A control request that cannot be carried out, and why (the API answers 400 or 404)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Whom a control stops. Empty fields match anything; no fields at all is global."""

    tenant: str = ""
    service: str = ""
    agent: str = ""
    session: str = ""
    trace: str = ""  # a W3C trace id: 32 lowercase hex digits (``trace_id_of`` checks one)
    user: str = ""
    tool: str = ""

    @property
    def named(self) -> tuple[str, ...]:
        return tuple(name for name in SCOPE_COLUMNS if getattr(self, name))

    @property
    def key(self) -> str:
        """Canonical text: ``agent=support;session=s1``, or ``global``.

        >>> Scope(session="s1", agent="support").key, Scope().key
        ('agent=support;session=s1', 'global')
        """
        return ";".join(f"{n}={getattr(self, n)}" for n in self.named) or "global"

    def validate(self) -> None:
        for name in self.named:
            value = getattr(self, name)
            if len(value) > MAX_VALUE_LENGTH or not value.isprintable():
                raise ControlError(
                    f"{name} must be printable text of at most {MAX_VALUE_LENGTH} characters"
                )
        if self.trace and trace_id_of(self.trace) != self.trace:
            raise ControlError(f"trace must be 32 lowercase hex digits, got {self.trace!r}")


_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def trace_id_of(value: str) -> str:
    """A trace id as the spans store it (32 lowercase hex digits), or a ``ControlError``.

    An id of another shape would never match a span, so the control would stop nothing.

    >>> trace_id_of("4BF92F3577B34DA6A3CE929D0E0E4736")
    '4bf92f3577b34da6a3ce929d0e0e4736'
    >>> trace_id_of("4bf92f35")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    analyzer.containment.control.ControlError: trace id must be 32 hex digits ..., got '4bf92f35'
    """
    text = value.strip().lower() if isinstance(value, str) else ""
    if not _TRACE_ID.fullmatch(text) or text == "0" * 32:
        raise ControlError(
            "trace id must be 32 hex digits (W3C trace-id, as OpenTelemetry formats it:"
            f' format(span_context.trace_id, "032x")), got {value!r}'
        )
    return text


@dataclass(frozen=True, slots=True)
class Context(Scope):
    """What a check is about: the agent asking (its tenant, service and name), and the session,
    trace, user and tool in question (the fields of a scope; a control applies when its named
    fields equal these)."""


@dataclass(frozen=True, slots=True)
class Control:
    scope: Scope
    mode: str  # one of MODES, or "enabled" for a lifted control
    actor: str
    source: str  # person | policy
    reason: str
    incident_id: str = ""
    at_ns: int = 0

    def row(self, version: int) -> dict:
        row = {column: getattr(self.scope, name) for name, column in SCOPE_COLUMNS.items()}
        row.update(
            key=self.scope.key,
            mode=self.mode,
            actor=self.actor,
            source=self.source,
            reason=self.reason,
            incident_id=self.incident_id,
            at=utc_text(self.at_ns),
            version=version,
        )
        return row

    def for_people(self) -> dict:
        """The JSON the API returns for a control in force."""
        return {
            "scope": self.scope.key,
            **{name: getattr(self.scope, name) for name in self.scope.named},
            "mode": self.mode,
            "actor": self.actor,
            "source": self.source,
            "reason": self.reason,
            "incident_id": self.incident_id,
            "since": utc_text(self.at_ns),
        }

    @classmethod
    def from_row(cls, row: dict) -> Control:
        scope = Scope(**{name: row.get(column, "") for name, column in SCOPE_COLUMNS.items()})
        return cls(
            scope,
            row["mode"],
            row["actor"],
            row["source"],
            row["reason"],
            row["incident_id"],
            int(row["at_ns"]),
        )


def check_mode(scope: Scope, mode: str) -> None:
    """The combinations that make sense; anything else is a ``ControlError`` saying why."""
    if mode not in MODES:
        raise ControlError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == CIRCUIT_OPEN and not scope.tool:
        raise ControlError("a tool circuit needs a tool (--tool NAME)")
    if scope.tool and mode != CIRCUIT_OPEN:
        raise ControlError(
            f"a scope with a tool opens that tool's circuit (kill or pause --tool); {mode} applies"
            " to agents, sessions and users"
        )
    if mode == "quarantined" and not (scope.user or scope.session or scope.trace):
        raise ControlError(
            "quarantine takes a user, a session or a trace (--user ID, --session ID or --trace ID)"
        )


@dataclass(slots=True)
class Decision:
    """The answer to one check: the agent's state, the tool's circuit, and the controls behind."""

    state: str = "enabled"  # the most restrictive agent mode in force for the context
    tool_open: bool = False  # the context's tool has an open circuit
    because: list[Control] = field(default_factory=list)

    @property
    def agent_enabled(self) -> bool:
        """May the agent take a new consequential action? (budget_frozen still may)."""
        return _RANK[self.state] < _RANK["quarantined"]

    @property
    def runs_enabled(self) -> bool:
        """May a new run start for this context?"""
        return self.state == "enabled"

    @property
    def tool_enabled(self) -> bool:
        return self.agent_enabled and not self.tool_open

    def as_json(self) -> dict:
        return {
            "state": self.state,
            "agent_enabled": self.agent_enabled,
            "runs_enabled": self.runs_enabled,
            "tool_enabled": self.tool_enabled,
            "controls": [c.for_people() for c in self.because],
        }


class ControlTable:
    """The controls in force, indexed so that a check costs a few dict lookups.

    Controls are grouped by which fields their scope names; a check looks each group up once with
    the context's values in those fields, so its cost grows with the number of distinct scope
    shapes in force (a handful), not with the number of controls.
    """

    def __init__(self, controls: list[Control] = ()) -> None:
        self._groups: dict[tuple[str, ...], dict[tuple[str, ...], Control]] = {}
        for control in controls:
            self.put(control)

    def put(self, control: Control) -> None:
        """Put a control in force (mode ``enabled`` lifts its scope's control)."""
        named = control.scope.named
        values = tuple(getattr(control.scope, name) for name in named)
        group = self._groups.setdefault(named, {})
        if control.mode == "enabled":
            group.pop(values, None)
            if not group:
                del self._groups[named]
        else:
            group[values] = control

    def get(self, scope: Scope) -> Control | None:
        named = scope.named
        return self._groups.get(named, {}).get(tuple(getattr(scope, n) for n in named))

    def all(self) -> list[Control]:
        return sorted(
            (c for group in self._groups.values() for c in group.values()),
            key=lambda c: (c.scope.key, c.at_ns),
        )

    def decide(self, context: Context) -> Decision:
        decision = Decision()
        for named, group in self._groups.items():
            control = group.get(tuple(getattr(context, n) for n in named))
            if control is None:
                continue
            decision.because.append(control)
            if control.mode == CIRCUIT_OPEN:
                decision.tool_open = True
            elif _RANK[control.mode] > _RANK[decision.state]:
                decision.state = control.mode
        return decision

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())


_IN_FORCE = """
SELECT * EXCEPT (at), toUnixTimestamp64Nano(at) AS at_ns
FROM control_state FINAL WHERE mode != 'enabled'
SETTINGS output_format_json_quote_64bit_integers = 0
"""


class ControlBoard:
    """The collector's controls: change them (store first, then memory), check them, refresh.

    ``run_store(fn, *args)`` runs a blocking store call on the store's thread (``Collector``).
    ``on_change(control, previous)`` is awaited after each change is stored (the containment
    listener records automatic actions on their incidents).
    """

    def __init__(
        self, store, run_store, clock: Callable[[], int] = time.time_ns, metrics=None
    ) -> None:
        self.store = store
        self.run_store = run_store
        self.clock = clock
        self.metrics = metrics  # collector.metrics.Metrics, or None
        self.table = ControlTable()
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped by each change, so a refresh read before it is discarded

    def decide(self, context: Context) -> Decision:
        return self.table.decide(context)

    async def load(self) -> int:
        """Read what is in force from the store (at start, then every second)."""
        generation = self._generation
        rows = await self.run_store(query_rows, self.store, _IN_FORCE)
        controls = [Control.from_row(row) for row in rows]
        if generation == self._generation:  # no change of ours landed while we read
            self.table = ControlTable(controls)
            if self.metrics is not None:
                self.metrics.controls_in_force.set(len(self.table))
        return len(controls)

    async def refresh_forever(self, every_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.load()
            except Exception as exc:  # the store is down: keep serving what we have
                log.warning("control refresh failed, serving the last state read: %s", exc)

    async def set(
        self,
        scope: Scope,
        mode: str,
        *,
        actor: str,
        reason: str,
        source: str = "person",
        incident_id: str = "",
    ) -> tuple[Control, Control | None] | None:
        """Put ``scope`` in ``mode``. Returns (control, previous), or None when a policy action
        would not make things stricter (automatic actions never loosen or repeat a control).
        """
        scope.validate()
        if mode != "enabled":
            check_mode(scope, mode)
        if not reason.strip():
            raise ControlError("a reason is required (--reason '...'): it goes in the audit trail")
        async with self._lock:
            previous = self.table.get(scope)
            if source == "policy" and previous is not None:
                if mode == previous.mode or _RANK.get(mode, 9) <= _RANK.get(previous.mode, 9):
                    return None
            if mode == "enabled" and previous is None:
                raise ControlError(f"nothing is in force for {scope.key}")
            control = Control(
                scope, mode, actor, source, reason[:MAX_REASON_LENGTH], incident_id, self.clock()
            )
            await self._write(control, previous)
            self._generation += 1
            self.table.put(control)
            if self.metrics is not None:
                self.metrics.control_changes.labels(mode, source).inc()
                self.metrics.controls_in_force.set(len(self.table))
        log.info(
            "control %s: %s -> %s by %s (%s): %s",
            scope.key,
            previous.mode if previous else "enabled",
            mode,
            actor,
            source,
            reason,
        )
        return control, previous

    async def _write(self, control: Control, previous: Control | None) -> None:
        version = max(control.at_ns, (previous.at_ns + 1) if previous else 0)
        audit = control.row(version)
        del audit["version"]
        audit["previous_mode"] = previous.mode if previous else "enabled"
        await self.run_store(insert_rows, self.store, "control_state", [control.row(version)])
        await self.run_store(insert_rows, self.store, "control_audit", [audit])


def scope_from(values: dict) -> Scope:
    """A Scope from a JSON object's fields (unknown fields are an error: a typo must not widen
    a control to everyone)."""
    unknown = set(values) - set(SCOPE_COLUMNS)
    if unknown:
        raise ControlError(
            f"unknown scope field(s) {', '.join(sorted(unknown))}; expected"
            f" {', '.join(SCOPE_COLUMNS)} (or none at all for global)"
        )
    for name, value in values.items():
        if not isinstance(value, str):
            raise ControlError(f"scope field {name!r} must be a string")
    if values.get("trace"):
        values = {**values, "trace": trace_id_of(values["trace"])}
    return Scope(**values)


assert [f.name for f in fields(Scope)] == list(SCOPE_COLUMNS)
