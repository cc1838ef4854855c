"""Who is looking at the console: a login form that trades the API token for a session cookie.

A browser cannot send ``Authorization: Bearer`` when a person follows a link, so the console
asks for the token once (``POST /login``) and answers with a cookie holding a random session id
(``HttpOnly``: scripts cannot read it; ``SameSite=Strict``: no other site's page can send it;
``Secure`` over HTTPS). The token itself stays on the server, beside the session, and is checked
again on every request: rotate ``api_token`` and every console session ends.

State-changing requests (ack, resolve, contain, logout) need the cookie, the session's own form
token (``csrf``, a hidden field of every form) and, when the browser sends one, an ``Origin`` of
this very host. After login the console goes only to a path of its own (no open redirect).

While no API (or reader) token is configured the console is open, as the API is: the collector
then listens on loopback only (``Config._token_beyond_loopback``).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from collector.auth import ADMIN, OPEN, READER, Principal, Tokens

COOKIE = "agentwatch_console"
#: a session opened for this request (an open console's first page): its cookie is set on the answer
NEW_SESSION = web.RequestKey("console_new_session", str)
SESSION_TTL_S = 12 * 3600  # one on-call shift
MAX_SESSIONS = 1000  # the oldest is forgotten first: memory stays bounded whatever logs in


@dataclass
class ConsoleSession:
    token: str | None  # None: the console is open (no token configured)
    actor: str  # the name on-call typed at login: the actor of their acks and controls
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.monotonic() + SESSION_TTL_S)
    flash: str = ""  # what the last form did, shown once on the next page


class Sessions:
    """The console's logged-in browsers, in memory (a restart asks everyone to log in again)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self._by_id: dict[str, ConsoleSession] = {}
        self.throttle = LoginThrottle()

    def principal(self, token: str | None) -> Principal | str:
        """Who ``token`` is on the console (the surface of ``GET /v1/incidents``), else why not."""
        return self.tokens.check(token, (READER,))

    def open(self, token: str | None, actor: str) -> str:
        if len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]
        session_id = secrets.token_urlsafe(32)
        self._by_id[session_id] = ConsoleSession(token, actor)
        return session_id

    def close(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def find(self, request: web.Request) -> tuple[ConsoleSession, Principal] | None:
        """The request's session and principal, or None (not logged in, expired, token gone)."""
        session = self._by_id.get(request.cookies.get(COOKIE, ""))
        if self.principal(None) is OPEN:  # no token configured: open, like the API
            if session is None:  # still a session of its own: its form token guards the forms
                session_id = self.open(None, "console")
                request[NEW_SESSION] = session_id
                session = self._by_id[session_id]
            return session, OPEN
        if session is None or session.expires < time.monotonic():
            return None
        found = self.principal(session.token)
        return (session, found) if isinstance(found, Principal) else None


class LoginThrottle:
    """At most ``failures`` wrong tokens a minute from one address; then 429 until the minute
    has passed (a guessed token is the one way in). Bounded: the oldest address is forgotten.

    >>> now = [0.0]
    >>> throttle = LoginThrottle(failures=2, clock=lambda: now[0])
    >>> throttle.failed("10.0.0.1"); throttle.failed("10.0.0.1"); throttle.blocked("10.0.0.1")
    True
    >>> throttle.blocked("10.0.0.2"), (now.__setitem__(0, 61.0), throttle.blocked("10.0.0.1"))[1]
    (False, False)
    """

    WINDOW_S = 60.0
    MAX_ADDRESSES = 10_000

    def __init__(self, failures: int = 10, clock=time.monotonic) -> None:
        self.failures = failures
        self.clock = clock
        self._by_address: dict[str, list[float]] = {}

    def blocked(self, address: str) -> bool:
        recent = [t for t in self._by_address.get(address, ()) if t > self.clock() - self.WINDOW_S]
        self._by_address[address] = recent
        if not recent:
            del self._by_address[address]
        return len(recent) >= self.failures

    def failed(self, address: str) -> None:
        if len(self._by_address) >= self.MAX_ADDRESSES and address not in self._by_address:
            del self._by_address[next(iter(self._by_address))]
        self._by_address.setdefault(address, []).append(self.clock())


def set_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(
        COOKIE, session_id, max_age=SESSION_TTL_S, httponly=True, samesite="Strict",
        secure=request.secure, path="/",
    )  # fmt: skip


def may_change(principal: Principal) -> bool:
    """Ack, resolve and contain need the admin token, as on the API (a reader only reads)."""
    return principal.role == ADMIN


def same_origin(request: web.Request) -> bool:
    """A browser's ``Origin`` (or, without it, ``Referer``) names this host, when it sends one."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return True  # not a browser's cross-site form: those always carry Origin on POST
    return urlsplit(origin).netloc == request.host


def form_token_ok(session: ConsoleSession, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf, given)


def local_path(target: str | None) -> str:
    """Where to go after login: a path of this console, never another site.

    >>> local_path("/incidents/inc-1?x=1"), local_path("//evil.example/"), local_path("https://e/")
    ('/incidents/inc-1?x=1', '/', '/')
    >>> local_path("/\\\\evil.example"), local_path(None)
    ('/', '/')
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(c in target for c in "\r\n\\"):
        return "/"
    return target
