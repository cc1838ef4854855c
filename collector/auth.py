"""Who a request is, from its token: one answer for every port (OTLP, API, SQL).

The token decides, never the request: a tenant's ingest token stores spans under that tenant
whatever ``tenant.id`` the spans carry, and a tenant's read token reads that tenant's rows only.

| token | role | may |
|---|---|---|
| ``api_token`` | ``admin`` | everything, every tenant |
| ``sql_token`` | ``sql`` | the SQL port (and write there when ``sql_readonly: false``), ``POST /v1/sql``; every tenant |
| ``tenants.<name>.read_token`` | ``reader`` | incidents (read), ``POST /v1/sql``, the SQL port: that tenant's rows |
| ``tenants.<name>.ingest_token`` | ``ingest`` | the OTLP ports, as that tenant; flag checks (OFREP) |

A surface for which no token is configured is open (the collector then listens on loopback, or
was told ``allow_unauthenticated``); its caller counts as ``admin``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

ADMIN, SQL, READER, INGEST = "admin", "sql", "reader", "ingest"


@dataclass(frozen=True)
class Principal:
    role: str
    tenant: str | None = None  # None: every tenant


OPEN = Principal(ADMIN)


class Tokens:
    """The configured tokens; ``find`` compares a given one with each in constant time."""

    def __init__(self, config) -> None:
        entries: list[tuple[str, Principal]] = []
        if config.api_token:
            entries.append((config.api_token, Principal(ADMIN)))
        if config.sql_token:
            entries.append((config.sql_token, Principal(SQL)))
        for name, tenant in config.tenants.items():
            if tenant.read_token:
                entries.append((tenant.read_token, Principal(READER, name)))
            if tenant.ingest_token:
                entries.append((tenant.ingest_token, Principal(INGEST, name)))
        self._entries = [(token.encode(), principal) for token, principal in entries]
        self._roles = {principal.role for _, principal in entries}

    def find(self, given: str | None) -> Principal | None:
        """The principal of ``given``; every token is compared, so timing tells nothing."""
        found = None
        candidate = (given or "").encode()
        for token, principal in self._entries:
            if hmac.compare_digest(candidate, token):
                found = principal
        return found

    def check(
        self, given: str | None, roles: tuple[str, ...], guarded_by: tuple[str, ...] | None = None
    ) -> Principal | str:
        """The principal if ``given`` opens a surface for ``roles`` (admin opens all); else why
        not. The surface is open (``OPEN``) while no token of a ``guarded_by`` role is configured
        (default: admin and ``roles``), so setting, e.g., api_token does not lock exporters out."""
        if not self._roles & set(guarded_by or (ADMIN, *roles)):
            return OPEN
        principal = self.find(given)
        if principal is None:
            return "missing or wrong token" if given else "no token given"
        if principal.role != ADMIN and principal.role not in roles:
            return f"a {principal.role} token does not open this"
        return principal


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
