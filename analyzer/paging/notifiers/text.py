"""What the vendor notifiers write alike: the incident as text, and vendor limits applied loudly."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from analyzer.incidents.model import IncidentRecord

log = logging.getLogger("agentwatch.paging")


def clip(text: str, limit: int, what: str, receiver: str) -> str:
    """``text`` cut to a vendor's ``limit`` characters; a cut is logged, never silent."""
    text = str(text)
    if len(text) <= limit:
        return text
    log.warning("%s: %s cut from %d to %d characters", receiver, what, len(text), limit)
    return text[: limit - 1] + "…"


def blast_radius(incident: IncidentRecord) -> str:
    return (
        f"{incident.sessions_affected} session(s), "
        f"{incident.users_affected} user(s), "
        f"{incident.occurrences} occurrence(s)"
    )


def finding_line(incident: IncidentRecord) -> str:
    """One incident of a page, as on-call scans a list of them.

    >>> from analyzer.paging.model import incident_for_test_page
    >>> finding_line(incident_for_test_page(0)).split(" (test-")[0]
    'SEV3 test/test_page: agentwatch test page (resolves itself)'
    """
    done = " [resolved]" if incident.status == "resolved" else ""
    return (
        f"{incident.severity} {incident.detector}/{incident.kind}: {incident.title}"
        f" ({incident.incident_id}){done}"
    )


def findings_text(findings: tuple[IncidentRecord, ...]) -> str:
    """The incidents of one page, a line each (the page's own first)."""
    return "\n".join(finding_line(i) for i in findings)


def findings_details(findings: tuple[IncidentRecord, ...]) -> list[dict]:
    """The incidents of one page as structured details (PagerDuty, webhook)."""
    return [
        {
            "incident_id": i.incident_id,
            "detector": i.detector,
            "kind": i.kind,
            "title": i.title,
            "severity": i.severity,
            "status": i.status,
        }
        for i in findings
    ]


def evidence_text(incident: IncidentRecord) -> str:
    """The evidence as the ``incidents`` table keeps it: a JSON list of texts."""
    return orjson.dumps(list(incident.evidence)).decode()


def iso_time(ns: int) -> str:
    """Nanoseconds since the epoch (0: now) -> RFC 3339 in milliseconds, UTC.

    >>> iso_time(1_763_792_078_696_914_422)
    '2025-11-22T06:14:38.696Z'
    """
    when = datetime.fromtimestamp(ns // 1_000_000_000, UTC) if ns else datetime.now(UTC)
    millis = (ns // 1_000_000) % 1000 if ns else when.microsecond // 1000
    return f"{when:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"
