"""Infrastructure: the systems an agent depends on are failing (infrastructure class, SEV1–3).

**Evidence.** A failed llm/embedding or tool/retrieval step is classified (``classify``: a
``kind``, the incident's, and a finer ``cause``, the evidence's) from every place a span keeps its
error, as the collector folds them into three ``Step`` fields (``collector/normalize.py``):

- ``error_type``: ``error.type``, else the exception event's ``exception.type``, else the HTTP
  status code; matched lower-cased, as class names *and* as message text (the table below);
- ``http_status``: the HTTP status attributes, else a status code named in the error type
  (``openai.RateLimitError`` → 429), else one named in the status or exception message ("Error
  code: 503", "status 502");
- ``error_text`` (``error_text_of``, ≤ 512 characters, not stored): the span's status message,
  its exception events ("ConnectionRefusedError: [Errno 111] Connection refused") and, for a tool,
  the start of its result text. It is read where the type and status say nothing (a framework's
  class in ``error.type``: ``ToolRetryError``, a tool's own exception class, ``_OTHER``), and for
  a provider's answer about the request itself (a content filter, the context window, a rate
  limit, even under a 400/403). Free text: only unambiguous phrases count
  (``analyzer.failure_text``: "connection refused", "timed out", "name or service not known",
  "certificate verify failed", "bad gateway", "too many requests" …), never single words such as
  "timeout" or "connect", which an agent's own error ("invalid timeout value") may contain.

A tool span **not marked failed** counts only when its result is a tool framework's report of
the call failing (the collector's ``_TOOL_ERROR_MARKERS`` at the result's start: the OpenAI Agents
SDK's "An error occurred while running the tool", LangGraph's and MCP servers' "Error: …" / "Error
executing tool", smolagents' "Error when executing tool", CrewAI's "I encountered an error while
trying to use the tool") *and* the text names an infrastructure cause: then it is judged as a
failure with that cause. A coding agent's ordinary output that mentions "Connection refused" (a
test log it reads, a curl it ran) carries no marker and is never read. LangChain's
``handle_tool_error`` hands over the bare message: only a span marked failed is read there.

| kind (signature) | cause (evidence) | when |
|---|---|---|
| none: not infrastructure | content filter | ``content_filter``, ContentPolicyViolation, "content policy", ResponsibleAIPolicy in the type, or "content management policy" (Azure), "content_filter", "content filter" in the error text. **Decision**: a content filter is the provider *enforcing its policy* on this content, a judgement about the agent's input; the provider is up and answered as designed, and retrying will not help, so it is not an outage (nor the agent's loop): it is left to the semantic detectors (and ``finish_reason`` ``content_filter``), never paged as infrastructure |
| ``context_length`` | context_length | llm/embedding: the type or error text names the context window (``context_length_exceeded``, ContextWindowExceeded, "maximum context length"), even under a ``BadRequestError``/400 |
| ``rate_limit`` | rate_limit | HTTP 429, or RateLimit / TooManyRequests / "rate limit" in the type, or "rate limit exceeded/reached", "too many requests", "resource has been exhausted" in the error text, even under a 403 (GitHub's) (llm or tool) |
| ``auth`` | auth | llm/embedding: 401/403, or Authentication / PermissionDenied / Unauthorized. A tool's bare 401/403 is left to the semantic detectors: it cannot be told from the agent reaching for something it may not touch |
| none: the agent's misuse | — | any other 4xx (400 invalid argument, 404, 409, 422, …): the request was refused as such; the loop detector's ``repeated_failure`` (semantic) judges repeats |
| ``timeout`` | timeout | 408, or Timeout / TimedOut / "timed out" / DeadlineExceeded (``httpx.ReadTimeout``, ``CommandTimeoutError``, ``ConnectTimeout``, "EXECUTION TIMED OUT") |
| ``provider_5xx`` (llm) / ``tool_backend`` (tool) | http_5xx | HTTP 5xx (529 overloaded included), or InternalServer / ServiceUnavailable / Unavailable / Overloaded / BadGateway / GatewayTimeout in the type |
| 〃 | tls | SSLError, SSLCertVerification, "certificate", TLSError, handshake |
| 〃 | dns | NameResolution, "name or service not known", ``gaierror``, getaddrinfo, DNSError, NXDOMAIN |
| 〃 | connection_refused | ConnectionRefused, "connection refused", ECONNREFUSED |
| 〃 | connection_reset | ConnectionReset / Aborted, ECONNRESET, BrokenPipe, RemoteDisconnected, RemoteProtocolError |
| 〃 | connection | any other Connect… (``APIConnectionError``, ``httpx.ConnectError``), Unreachable, NetworkError |

Anything else (``_OTHER``, ``ValueError``, a framework class alone, with no cause in its error
text) is not infrastructure.

**Rules.** Three rules judge the classified failures, in this order (the first that holds):

- **rate** (across sessions, per tool or model): per window key ``(tenant, service, llm|tool,
  model or tool)`` a sliding window of ``window_s`` (default 60 s) kept as a ring of ``buckets``
  (12 × 5 s) counts every call and, per kind, the failures. A kind is flagged when, in the window,
  failures ≥ ``min_failures`` (5) AND failures / calls ≥ ``min_rate`` (0.2) AND the failures come
  from ≥ ``min_sessions`` (2) distinct sessions: SEV2, or SEV1 once the failing signature spans ≥
  ``spread_sessions`` (10) sessions. Every llm/tool step is observed so the rate has its
  denominator; an SDK-retried 429 followed by success is one failure among calls, far below both
  thresholds, and opens nothing.
- **streak** (one session-run): ``session_failures`` (3) consecutive failures with one signature
  (a success of the same model/tool, or a non-infrastructure answer from it, breaks the streak):
  SEV3, isolated. Reported once per streak.
- **isolated** (one session-run, tools only): the ``isolated_failures``-th (default 1st) failure
  of one tool/retrieval signature in the session whose cause is unambiguous infrastructure
  (``UNAMBIGUOUS_CAUSES``: timeout, connection refused/reset, connection, DNS, TLS, 5xx): SEV3.
  A backend timing out once among a thousand healthy calls is invisible to the rate (it never
  reaches 20 % of a window), but it is a real failure of a system the agent depends on. Not for
  models (an SDK retries a provider's single timeout or 5xx; streak and rate judge those) and not
  for a tool's 429 (back-pressure the caller is expected to absorb). ``isolated_failures: 0``
  turns it off.

**Dedup.** Signature: ``kind:model`` or ``kind:tool`` (the failure class and the tool/provider's
model), never session, span or cause, so the incident fingerprint (tenant, service, agent,
detector, kind, signature) makes a flaky backend *one* incident however many sessions see it.
Each signature is reported at most once per window (cooldown ``window_s``) whichever rule fires,
so a flaky or down backend updates that incident at most once a minute instead of paging again;
only an escalation (SEV3→SEV2→SEV1) is reported within the cooldown. Every finding's evidence says
why (``analyzer.finding.explain``: ``why``, ``threshold``, ``observed``): ``rule``, ``kind``,
``cause``, the window's ``failures``/``calls``/``rate``/``window_s``, ``sessions_affected``, the
session's ``session_streak`` and ``session_failures``, the ``error_type``/``http_status`` seen,
and up to three recent samples (ids, type, status, cause).

Clock: the window advances with ``now_ns``; a step counts in the bucket of its own time clamped to
the live window (a late span counts in the oldest live bucket, a span from a skewed clock in the
newest). The thresholds are ``InfrastructureThresholds`` (defaults there; the constructor takes
them as keywords), overridden per agent by policy (``thresholds.infrastructure.<name>``); the
window's shape (``window_s``, ``buckets``) is the detector's.

Memory, bounded (measured with the tests' recursive ``sys.getsizeof``, CPython 3.11, 64-bit,
key strings, UUID session ids and hex span/trace ids included):

- at most ``max_keys`` (4,096) window keys, least recently used evicted first, and keys idle for a
  whole window dropped as they reach the LRU end. A key with calls only is ≈ 0.5 KB (the key tuple
  and its strings, a 12-bucket ``array`` of counts, the LRU entry); each kind failing on it adds
  ≈ 2.1 KB at its caps (its own 12-bucket ring, 2 × ``session_cap`` (32) int64 session slots,
  ``_SAMPLES`` (3) sample tuples, session ids cut to 64 and error types to 80 characters); a kind quiet for a window
  and out of cooldown is dropped. An llm key can fail in 5 kinds, a tool key in 3, so a key stays
  under ``KEY_BYTES_MAX`` = 12 KiB: ≤ 48 MiB at the default cap if every key failed every way at
  once, ≈ 2 MiB for 4,096 healthy keys;
- per session, one ``_Streak`` inside ``SessionState`` (only once something failed in it): its
  signature string and a count per failing signature, at most ``_SESSION_SIGNATURES`` (8), the
  oldest dropped (≈ 0.6 KB with one signature, ≤ 1.5 KB full, 28-character signatures),
  bounded with it by the session table.

Distinct sessions per window are counted exactly up to ``session_cap`` (fixed slots of session
hash and last failing bucket; when all are taken the stalest goes, the first to leave the window
anyway), so ``sessions_affected`` is a floor past 32 and SEV1 needs ``spread_sessions`` ≤ the cap.

Losing a key (LRU/idle) forgets its counts and its cooldown: a later burst may report again, which
updates the same incident (incidents are deduplicated by fingerprint).

>>> from analyzer.session import SessionTable
>>> from analyzer.step import Step
>>> sessions, detector = SessionTable(), InfrastructureDetector()
>>> def call(t, session, status=0):
...     step = Step(t * 10**9, 1, "acme", "svc", "support", session, "u1", f"t-{session}",
...                 f"span{t}", "", "llm", model="gpt-4o", status="Error" if status else "Ok",
...                 error_type="openai.RateLimitError" if status else "", http_status=status)
...     return detector.observe(step, sessions.for_step(step, step.time_ns), step.time_ns)
>>> [call(0, "s0", 429), call(1, "s0")]  # one 429, retried successfully: nothing
[None, None]
>>> [call(t, f"s{t}", 429) for t in range(2, 5)]
[None, None, None]
>>> finding = call(5, "s5", 429)  # 5 failures of 6 calls from 5 sessions within 60 s
>>> finding.kind, finding.severity, finding.signature, finding.incident_class
('rate_limit', 'SEV2', 'rate_limit:gpt-4o', 'infrastructure')
>>> call(7, "s7", 429) is None  # the same window: the incident counts the rest
True
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

from pydantic import Field

from analyzer.detectors.base import DetectorThresholds, ResolvedThresholds
from analyzer.failure_text import text_cause
from analyzer.finding import Finding, explain
from analyzer.step import Step

if TYPE_CHECKING:
    from analyzer.session import SessionState

KEY_BYTES_MAX = 12 * 1024  # documented worst case per window key, checked by the tests

_MODEL_STEPS = ("llm", "embedding")
_BACKEND_STEPS = ("tool", "retrieval")
_SEVERITY_RANK = {"": 0, "SEV3": 1, "SEV2": 2, "SEV1": 3}
_SAMPLES = 3
_SESSION_SIGNATURES = 8  # signatures counted per session-run (the oldest dropped first)
_NEVER = -(2**63)

_CONTEXT_WORDS = (
    "context_length",
    "contextlength",
    "contextwindow",
    "context_window",
    "maximum context length",
)
# the provider refused the content by its policy: the provider works (see the module docstring)
_CONTENT_FILTER_WORDS = (
    "content_filter",
    "contentfilter",
    "content filter",
    "content_policy",
    "contentpolicy",
    "content policy",
    "responsibleaipolicy",
    "safety_block",
)
_RATE_LIMIT_WORDS = (
    "ratelimit",
    "rate_limit",
    "rate limit",
    "toomanyrequests",
    "too_many_requests",
    "too many requests",
)
_AUTH_WORDS = ("authentication", "permissiondenied", "permission_denied", "unauthorized")
# (cause, words) in order: the first match names the cause; every text is the lower-cased
# ``error_type`` (a class name, a code, or a message when an exporter puts one there)
_TIMEOUT_CAUSES = (
    (
        "timeout",
        (
            "timeout",
            "timedout",
            "timed_out",
            "timed out",
            "deadlineexceeded",
            "deadline_exceeded",
            "deadline exceeded",
        ),
    ),
)
_UNREACHABLE_CAUSES = (
    ("tls", ("sslerror", "ssl.", "sslcert", "ssl:", "certificate", "tlserror", "handshake")),
    (
        "dns",
        (
            "nameresolution",
            "name resolution",
            "name or service not known",
            "nodename nor servname",
            "gaierror",
            "getaddrinfo",
            "dnserror",
            "dns_",
            "nxdomain",
        ),
    ),
    ("connection_refused", ("connectionrefused", "connection refused", "econnrefused")),
    (
        "connection_reset",
        (
            "connectionreset",
            "connection reset",
            "econnreset",
            "connectionaborted",
            "connection aborted",
            "brokenpipe",
            "broken pipe",
            "remotedisconnected",
            "remoteprotocolerror",
            "server disconnected",
        ),
    ),
    ("connection", ("connect", "unreachable", "no route to host", "networkerror")),
    (
        "http_5xx",
        (
            "internalserver",
            "internal server error",
            "serviceunavailable",
            "service unavailable",
            "unavailable",
            "overloaded",
            "badgateway",
            "bad gateway",
            "gatewaytimeout",
            "gateway timeout",
        ),
    ),
)
#: the causes whose evidence is unambiguous: one such failure of a tool backend is a finding
UNAMBIGUOUS_CAUSES = frozenset(
    {"timeout", "tls", "dns", "connection_refused", "connection_reset", "connection", "http_5xx"}
)
#: a cause the error text tells (``analyzer.failure_text``) -> the kind of a tool's failure
_TOLD_KIND = {
    "rate_limit": "rate_limit",
    "timeout": "timeout",
    **{cause: "tool_backend" for cause in UNAMBIGUOUS_CAUSES - {"timeout"}},
}


def _cause_in(text: str, causes: tuple) -> str:
    for cause, words in causes:
        if any(word in text for word in words):
            return cause
    return ""


def classify(step: Step) -> tuple[str, str] | None:
    """``(kind, cause)`` of a failed step's infrastructure failure, or None (see the table above).

    >>> from analyzer.step import Step
    >>> def failed(kind, error_type="", status=0):
    ...     return classify(Step(0, 0, "t", "s", "a", "", "", "tr", "sp", "", kind,
    ...                          status="Error", error_type=error_type, http_status=status))
    >>> failed("tool", "ConnectionRefusedError"), failed("tool", "CommandTimeoutError")
    (('tool_backend', 'connection_refused'), ('timeout', 'timeout'))
    >>> failed("llm", "openai.APIConnectionError"), failed("tool", "ssl.SSLCertVerificationError")
    (('provider_5xx', 'connection'), ('tool_backend', 'tls'))
    >>> failed("llm", "content_filter", 400), failed("tool", "ToolRetryError")
    (None, None)
    """
    failed = step.failed
    if not failed and not step.error_text:
        return None
    model_side = step.kind in _MODEL_STEPS
    if not model_side and step.kind not in _BACKEND_STEPS:
        return None
    et = step.error_type.lower()
    status = step.http_status
    told = text_cause(step.error_text) if step.error_text else ""
    if told == "content_filter" or any(word in et for word in _CONTENT_FILTER_WORDS):
        return None  # the provider's policy refused the content: it works as designed
    if not failed:  # a tool's result its framework worded as an error: the text is all there is
        if model_side or told not in _TOLD_KIND:
            return None
        return _TOLD_KIND[told], told
    if model_side and (told == "context_length" or any(word in et for word in _CONTEXT_WORDS)):
        return "context_length", "context_length"
    if status == 429 or told == "rate_limit" or any(word in et for word in _RATE_LIMIT_WORDS):
        return "rate_limit", "rate_limit"
    if model_side and (status in (401, 403) or any(word in et for word in _AUTH_WORDS)):
        return "auth", "auth"
    if 400 <= status < 500 and status != 408:
        return None  # the request was refused as such: the agent's call, not a failing system
    if status == 408 or _cause_in(et, _TIMEOUT_CAUSES):
        return "timeout", "timeout"
    cause = "http_5xx" if 500 <= status < 600 else _cause_in(et, _UNREACHABLE_CAUSES)
    if not cause and told in _TOLD_KIND:
        return ("provider_5xx" if model_side and told != "timeout" else _TOLD_KIND[told]), told
    if cause:
        return ("provider_5xx" if model_side else "tool_backend"), cause
    return None


def failure_kind(step: Step) -> str | None:
    """The infrastructure cause of a failed step, or None (succeeded, or not infrastructure).

    >>> from analyzer.step import Step
    >>> def failed(kind, error_type="", status=0):
    ...     return failure_kind(Step(0, 0, "t", "s", "a", "", "", "tr", "sp", "", kind,
    ...                              status="Error", error_type=error_type, http_status=status))
    >>> failed("llm", "openai.RateLimitError", 429), failed("llm", "httpx.ReadTimeout")
    ('rate_limit', 'timeout')
    >>> failed("llm", "openai.InternalServerError", 500), failed("tool", "503", 503)
    ('provider_5xx', 'tool_backend')
    >>> failed("llm", "context_length_exceeded", 400), failed("llm", "openai.BadRequestError", 400)
    ('context_length', None)
    >>> failed("tool", "ValueError", 400), failed("tool", "_OTHER"), failed("llm", "403", 403)
    (None, None, 'auth')
    """
    found = classify(step)
    return found[0] if found else None


class _Failures:
    """One kind's failures on one window key."""

    __slots__ = ("counts", "sessions", "samples", "reported_ns", "reported")

    def __init__(self, buckets: int, session_cap: int) -> None:
        self.counts = array("I", bytes(4 * buckets))
        # distinct failing sessions: hash of the session key and its last failing epoch, side by
        # side in two fixed arrays (no int objects); an empty slot's epoch is _NEVER
        self.sessions = (array("q", bytes(8 * session_cap)), array("q", [_NEVER]) * session_cap)
        self.samples: list[tuple] = []  # the most recent failures (≤ _SAMPLES), for evidence
        self.reported_ns = 0  # when this signature was last reported (the cooldown's start)
        self.reported = ""  # the severity reported then


class _Window:
    """Calls on one (tenant, service, llm|tool, model or tool) over the sliding window."""

    __slots__ = ("epoch", "calls", "kinds")

    def __init__(self, buckets: int, epoch: int) -> None:
        self.epoch = epoch  # index of the newest bucket (time // bucket length)
        self.calls = array("I", bytes(4 * buckets))
        self.kinds: dict[str, _Failures] = {}


class _Streak:
    """A session-run's infrastructure failures: its current streak (consecutive failures with one
    signature) and its failures per signature (≤ ``_SESSION_SIGNATURES``, oldest dropped)."""

    __slots__ = ("subject", "signature", "count", "failures")

    def __init__(self) -> None:
        self.subject: tuple = ()
        self.signature = ""
        self.count = 0
        self.failures: dict[str, int] = {}


class InfrastructureThresholds(DetectorThresholds):
    """Thresholds of the infrastructure detector (policy ``thresholds.infrastructure``)."""

    min_failures: int = Field(5, ge=1, description="failed calls in the window")
    min_rate: float = Field(0.2, ge=0, le=1, description="failure rate in the window")
    min_sessions: int = Field(2, ge=1, description="distinct failing sessions")
    spread_sessions: int = Field(
        10, ge=1, description="distinct failing sessions that make it SEV1"
    )
    session_failures: int = Field(
        3, ge=1, description="consecutive failures in one session that make a SEV3"
    )
    isolated_failures: int = Field(
        1,
        ge=0,
        description=(
            "failures of one tool backend with unambiguous infrastructure evidence (timeout, "
            "connection refused/reset, DNS, TLS, 5xx) in one session-run that make a SEV3 "
            "(0: off)"
        ),
    )


class InfrastructureDetector:
    name = "infrastructure"
    kinds = frozenset({"llm", "embedding", "tool", "retrieval"})  # calls to other systems
    thresholds_model = InfrastructureThresholds

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        buckets: int = 12,
        max_keys: int = 4096,
        session_cap: int = 32,
        **thresholds: float,
    ) -> None:
        self.thresholds = InfrastructureThresholds(**thresholds)
        self.limits = ResolvedThresholds(self.name, self.thresholds)
        self.buckets = max(1, buckets)
        self.bucket_ns = max(1, int(window_s * 1e9) // self.buckets)
        self.window_ns = self.bucket_ns * self.buckets
        self.max_keys = max_keys
        self.session_cap = max(session_cap, 1)
        self._windows: OrderedDict[tuple, _Window] = OrderedDict()
        # the windows already rolled to the current bucket: most steps need no LRU work
        self._current: dict[tuple, _Window] = {}
        self._current_epoch = -1
        self.evicted = 0

    def __len__(self) -> int:
        """Live window keys (never more than ``max_keys``)."""
        return len(self._windows)

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None:
        if step.kind in _MODEL_STEPS:
            group, label = "llm", step.model or "unknown"
        elif step.kind in _BACKEND_STEPS:
            group, label = "tool", step.tool or step.kind
        else:
            return None
        epoch = now_ns // self.bucket_ns
        if epoch != self._current_epoch:
            self._current.clear()
            self._current_epoch = epoch
        key = (step.tenant, step.service, group, label)
        window = self._current.get(key)
        if window is None:  # first time this bucket: roll the window, keep the LRU order
            window = self._current[key] = self._window(key, epoch)
        # the step's own bucket, clamped into the live window
        at, top = step.time_ns // self.bucket_ns, window.epoch
        if at >= top:
            at = top
        elif at <= top - self.buckets:
            at = top - self.buckets + 1
        slot = at % self.buckets
        window.calls[slot] += 1

        # a failure, or a tool's result worded as an error (error_text): most steps are neither
        found = classify(step) if step.status == "Error" or step.error_text else None
        subject = (group, label)
        if found is None:
            # a session gets a streak only once something fails (most sessions: never)
            streak = session.detectors.get(self.name)
            if streak is not None and streak.subject == subject:  # it answered: streak over
                streak.subject, streak.signature, streak.count = (), "", 0
            return None
        streak: _Streak = session.state(self.name, _Streak)
        kind, cause = found

        signature = f"{kind}:{label}"
        failures = window.kinds.get(kind)
        if failures is None:
            failures = window.kinds[kind] = _Failures(self.buckets, self.session_cap)
        failures.counts[slot] += 1
        _add_session(failures.sessions, hash(session.key), at)
        if len(failures.samples) >= _SAMPLES:
            del failures.samples[0]
        failures.samples.append(
            (
                step.span_id,
                step.trace_id,
                step.session[:64],
                step.error_type[:80],
                step.http_status,
                cause,
            )
        )
        if streak.signature == signature:
            streak.count += 1
        else:
            streak.subject, streak.signature, streak.count = subject, signature, 1
        in_session = streak.failures.pop(signature, 0) + 1  # re-inserted: the newest
        streak.failures[signature] = in_session
        if len(streak.failures) > _SESSION_SIGNATURES:
            del streak.failures[next(iter(streak.failures))]

        limits = self.limits(session.policy)
        failed = sum(failures.counts)
        calls = max(sum(window.calls), failed)
        live = window.epoch - self.buckets
        spread = sum(1 for last in failures.sessions[1] if last > live)
        rate = failed / calls

        severity, rule = "", ""
        if (
            failed >= limits["min_failures"]
            and rate >= limits["min_rate"]
            and spread >= limits["min_sessions"]
        ):
            severity = "SEV1" if spread >= limits["spread_sessions"] else "SEV2"
            rule = "rate"
        elif streak.count == int(limits["session_failures"]):
            severity, rule = "SEV3", "streak"
        elif (
            group == "tool"
            and cause in UNAMBIGUOUS_CAUSES
            and in_session == int(limits["isolated_failures"])
        ):
            severity, rule = "SEV3", "isolated"
        if not severity:
            return None
        cooling = failures.reported and now_ns - failures.reported_ns < self.window_ns
        if cooling and _SEVERITY_RANK[severity] <= _SEVERITY_RANK[failures.reported]:
            return None  # reported in this window: the incident counts what follows
        failures.reported_ns, failures.reported = now_ns, severity

        subject_field = "model" if group == "llm" else "tool"
        if rule == "rate":
            title = (
                f"{step.service}: {kind} on {label}: {failed}/{calls} calls failed "
                f"({rate:.0%}) in {self.window_ns / 1e9:g}s across {spread} sessions"
            )
        elif rule == "streak":
            title = (
                f"{step.agent or step.service}: {streak.count} {kind} failures in a row on {label}"
            )
        else:
            title = (
                f"{step.agent or step.service}: tool {label} failed ({cause}: "
                f"{step.error_type[:80] or step.http_status or step.error_text[:80]}), "
                f"{in_session} in this session"
            )
        if rule == "rate":
            why = (
                f"{failed} of {calls} calls to {label} failed ({cause}) in"
                f" {self.window_ns / 1e9:g}s across {spread} sessions (the rule fires at"
                f" {limits['min_failures']:g} failures, {limits['min_rate']:.0%} of calls and"
                f" {limits['min_sessions']:g} sessions)"
            )
            threshold = {
                "failures": limits["min_failures"],
                "rate": limits["min_rate"],
                "sessions": limits["min_sessions"],
            }
            observed = {"failures": failed, "rate": round(rate, 4), "sessions": spread}
        elif rule == "streak":
            threshold, observed = limits["session_failures"], streak.count
            why = (
                f"{streak.count} {cause} failures in a row on {label} in one session"
                f" (the rule fires at {threshold:g})"
            )
        else:
            threshold, observed = limits["isolated_failures"], in_session
            why = (
                f"tool {label} failed with unambiguous infrastructure evidence ({cause}:"
                f" {step.error_type[:80] or step.http_status}), {in_session} in this session"
                f" (the rule fires at {threshold:g})"
            )
        summary = {
            "kind": kind,
            "cause": cause,
            subject_field: label,
            "window_s": self.window_ns / 1e9,
            "failures": failed,
            "calls": calls,
            "rate": round(rate, 4),
            "sessions_affected": spread,  # exact up to session_cap, then a floor
            "session_streak": streak.count,
            "session_failures": in_session,  # of this signature in this session-run
            "error_type": step.error_type[:80],
            "http_status": step.http_status,
            "samples": [
                {
                    "span_id": span_id,
                    "trace_id": trace_id,
                    "session": session_id,
                    "error_type": error_type,
                    "http_status": http_status,
                    "cause": sample_cause,
                }
                for span_id, trace_id, session_id, error_type, http_status, sample_cause in (
                    failures.samples
                )
            ],
        }
        return Finding(
            detector=self.name,
            kind=kind,
            incident_class="infrastructure",
            severity=severity,
            title=title,
            step=step,
            signature=signature,
            evidence=(
                explain(why=why, rule=rule, threshold=threshold, observed=observed, **summary),
                step.evidence(),
            ),
        )

    def _window(self, key: tuple, epoch: int) -> _Window:
        """The key's window advanced to ``epoch`` (created if new); evicts idle and LRU keys."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(self.buckets, epoch)
            self._evict(epoch)
        else:
            self._windows.move_to_end(key)
            self._roll(window, epoch)
        return window

    def _roll(self, window: _Window, epoch: int) -> None:
        gap = epoch - window.epoch
        if gap <= 0:
            return  # the clock never moves a window back
        slots = range(self.buckets) if gap >= self.buckets else [
            e % self.buckets for e in range(window.epoch + 1, epoch + 1)
        ]  # fmt: skip
        for slot in slots:
            window.calls[slot] = 0
        for kind, failures in list(window.kinds.items()):
            for slot in slots:
                failures.counts[slot] = 0
            if not any(failures.counts) and epoch * self.bucket_ns - failures.reported_ns >= (
                self.window_ns
            ):
                del window.kinds[kind]  # quiet and out of cooldown: nothing left to remember
        window.epoch = epoch

    def _evict(self, epoch: int) -> None:
        while self._windows:
            oldest = next(iter(self._windows.values()))
            if len(self._windows) > self.max_keys or oldest.epoch <= epoch - self.buckets:
                self._current.pop(self._windows.popitem(last=False)[0], None)
                self.evicted += 1
            else:
                break


def _add_session(sessions: tuple[array, array], session: int, at: int) -> None:
    """Record a failing session; a new one takes an empty slot, else the stalest one's."""
    keys, lasts = sessions
    try:
        i = keys.index(session)
    except ValueError:
        i = lasts.index(min(lasts))  # an empty slot, or the first session to leave the window
        keys[i], lasts[i] = session, at
    else:
        lasts[i] = max(lasts[i], at)
