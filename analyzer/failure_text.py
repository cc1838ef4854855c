"""Which failing system an error's free text names: unambiguous phrases only.

``Step.error_text`` (a failed call's status and exception messages, or a tool's result its
framework worded as an error) is free text, and an agent's own errors share its words: "invalid
timeout value" or "cannot connect order 12" is no outage. So only phrases that name one cause and
nothing else count, never single words such as "timeout", "connect" or "unavailable". Read by
``Step.systems_failure`` (the loop detector leaves such failures to the infrastructure detector)
and by ``analyzer.detectors.infrastructure.classify``, so both judge a text the same way.
"""

from __future__ import annotations

#: (cause, lower-cased phrases) in order: the first cause with a phrase in the text names it.
#: ``content_filter`` and ``context_length`` come first: a provider refusing the content, or its
#: size, is an answer about the request, whatever else its message says.
TEXT_CAUSES = (
    (
        "content_filter",
        (
            "content management policy",  # Azure OpenAI
            "content_filter",
            "content filter",
            "content_policy_violation",
            "responsibleaipolicyviolation",
        ),
    ),
    ("context_length", ("maximum context length", "context_length_exceeded")),
    (
        "rate_limit",
        (
            "rate limit exceeded",
            "rate limit reached",
            "rate_limit_exceeded",
            "too many requests",
            "resource has been exhausted",  # Google's 429 RESOURCE_EXHAUSTED
        ),
    ),
    (
        "timeout",
        (
            "timed out",
            "deadline exceeded",
            "read timeout",
            "connect timeout",
            "readtimeout",
            "connecttimeout",
            "timeouterror",
        ),
    ),
    (
        "tls",
        (
            "certificate verify failed",
            "certificate_verify_failed",
            "ssl handshake",
            "tls handshake",
            "sslerror",
            "sslcertverificationerror",
        ),
    ),
    (
        "dns",
        (
            "name or service not known",
            "temporary failure in name resolution",
            "nodename nor servname",
            "getaddrinfo failed",
            "getaddrinfo enotfound",
            "nxdomain",
            "gaierror",
        ),
    ),
    ("connection_refused", ("connection refused", "econnrefused", "connectionrefusederror")),
    (
        "connection_reset",
        (
            "connection reset",
            "econnreset",
            "connectionreseterror",
            "broken pipe",
            "remote end closed connection",
            "server disconnected without sending a response",
        ),
    ),
    (
        "connection",
        (
            "no route to host",
            "network is unreachable",
            "failed to establish a new connection",
            "apiconnectionerror",
        ),
    ),
    (
        "http_5xx",
        (
            "internal server error",
            "service unavailable",
            "bad gateway",
            "gateway timeout",
            "internalservererror",
            "serviceunavailable",
        ),
    ),
)
#: the text's start that is read: a cause is named at the start of a message, not deep in a log
TEXT_MAX_CHARS = 4000


def text_cause(text: str) -> str:
    """The cause ``text`` names (a ``TEXT_CAUSES`` name), or "" when it names none.

    >>> text_cause("ConnectionRefusedError: [Errno 111] Connection refused")
    'connection_refused'
    >>> text_cause("HTTPSConnectionPool(host='api.crm'): Read timed out. (read timeout=30)")
    'timeout'
    >>> text_cause("The response was filtered due to the prompt triggering Azure OpenAI's "
    ...            "content management policy.")
    'content_filter'
    >>> text_cause("invalid timeout value: -1"), text_cause("cannot connect order 12")
    ('', '')
    """
    lowered = text[:TEXT_MAX_CHARS].lower()
    for cause, phrases in TEXT_CAUSES:
        if any(phrase in lowered for phrase in phrases):
            return cause
    return ""
