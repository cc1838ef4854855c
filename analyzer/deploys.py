"""Deploy markers: when a service, or one agent of it, was deployed, which version, and by whom.

CI marks a deploy (``agentwatch deploy mark``) and then gates the release on what happened after
it (``agentwatch recurrence check --since deploy``); on call reads the list to answer "what
changed?". The SQL of the ``deploys`` table (schemas/023) is here and only here; every value
reaches it as a query parameter (text hex-encoded, as in ``analyzer.incidents.repository``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from analyzer.incidents.model import utc_text
from analyzer.incidents.repository import text_param, text_value
from collector.store import insert_rows, query_rows

RunStore = Callable[..., Awaitable]
MAX_LIST = 500
#: what CI has at hand as a version: a tag, a semver, a git sha, an image digest
_VERSION = re.compile(r"^[\w.+:@/~-]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_SELECT = f"""
SELECT tenant, service, agent, version, toUnixTimestamp64Nano(at) AS at_ns, actor, note
FROM deploys
WHERE ({{any_tenant:UInt8}} = 1 OR tenant = {text_param("tenant")})
  AND ({{any_service:UInt8}} = 1 OR service = {text_param("service")})
  AND ({{any_agent:UInt8}} = 1 OR agent = {text_param("agent")}
       OR ({{service_wide:UInt8}} = 1 AND agent = ''))
  AND ({{any_version:UInt8}} = 1 OR version = {text_param("version")})
ORDER BY at DESC, service, agent
LIMIT {{limit:UInt32}}
SETTINGS output_format_json_quote_64bit_integers = 0"""


class DeployError(ValueError):
    """A marker that cannot be recorded as asked; retrying will not help."""


def check_name(what: str, value: str, required: bool = False) -> str:
    """``value`` stripped: at most 200 characters, no control characters.

    >>> check_name("service", " support-svc ")
    'support-svc'
    >>> check_name("service", "", required=True)
    Traceback (most recent call last):
    analyzer.deploys.DeployError: service: which service was deployed (its service.name)
    """
    value = value.strip()
    if required and not value:
        raise DeployError(f"{what}: which {what} was deployed (its {what}.name)")
    if len(value) > 200 or _CONTROL.search(value):
        raise DeployError(f"{what}: at most 200 characters, no control characters")
    return value


def check_version(version: str) -> str:
    """A version as CI names it: 1-128 letters, digits or ``. + : @ / ~ - _`` ('' for none).

    >>> check_version("v1.4.2+build.7"), check_version("")
    ('v1.4.2+build.7', '')
    >>> check_version("1.4'; DROP TABLE deploys")
    Traceback (most recent call last):
    analyzer.deploys.DeployError: version: 1-128 letters, digits or . + : @ / ~ - _ (a tag, a semver, a git sha)
    """
    version = version.strip()
    if version and not _VERSION.match(version):
        raise DeployError(
            "version: 1-128 letters, digits or . + : @ / ~ - _ (a tag, a semver, a git sha)"
        )
    return version


def iso(ns: int) -> str:
    """'2026-12-07T10:00:00.123456Z' (microseconds: what people and ``--since`` read)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
    return when.isoformat().replace("+00:00", "Z")


class DeployRepository:
    """The ``deploys`` table in the store."""

    def __init__(self, store, run_store: RunStore) -> None:
        self.store = store
        self.run_store = run_store

    async def mark(
        self, tenant: str, service: str, agent: str, version: str, actor: str, note: str,
        at_ns: int,
    ) -> dict:  # fmt: skip
        """Record a deploy at ``at_ns``; the deploy as ``find`` answers it."""
        row = {
            "tenant": tenant,
            "service": check_name("service", service, required=True),
            "agent": check_name("agent", agent),
            "version": check_version(version),
            "at": utc_text(at_ns),
            "actor": (actor.strip() or "api")[:200],
            "note": note[:2000],
        }
        await self.run_store(insert_rows, self.store, "deploys", [row])
        return _shown(row | {"at_ns": at_ns})

    async def find(
        self,
        tenant: str | None,
        service: str = "",
        agent: str = "",
        version: str | None = None,
        service_wide: bool = False,
        limit: int = 100,
    ) -> list[dict]:
        """Deploys, newest first: of ``tenant`` (every tenant's when None), of ``service``,
        ``agent`` and ``version`` when given ('' or None: any). With ``service_wide``, a deploy of
        the whole service (agent '') counts as one of each of its agents."""
        if not 1 <= limit <= MAX_LIST:
            raise DeployError(f"limit must be an integer from 1 to {MAX_LIST}")
        params = {
            "any_tenant": "1" if tenant is None else "0",
            "tenant": text_value(tenant or ""),
            "any_service": "0" if service else "1",
            "service": text_value(service),
            "any_agent": "0" if agent else "1",
            "agent": text_value(agent),
            "service_wide": "1" if service_wide else "0",
            "any_version": "1" if version is None else "0",
            "version": text_value(version or ""),
            "limit": str(int(limit)),
        }
        rows = await self.run_store(query_rows, self.store, _SELECT, params)
        return [_shown(row) for row in rows]

    async def latest(
        self, tenant: str | None, service: str, agent: str, version: str | None
    ) -> dict | None:
        """The deploy a release gate starts from: the newest of ``version`` (any when None) of
        ``service`` and/or ``agent``. A deploy of the whole service counts for its agents when
        the service is named, or the version is (then it names the deploy; an agent only narrows
        it); the latest deploy of an agent alone is one marked for that agent."""
        service_wide = bool(service) or version is not None
        found = await self.find(tenant, service, agent, version, service_wide, limit=1)
        return found[0] if found else None


def _shown(row: dict) -> dict:
    at_ns = int(row["at_ns"])
    keys = ("tenant", "service", "agent", "version", "actor", "note")
    return {key: row[key] for key in keys} | {"at": iso(at_ns), "at_ns": at_ns}
