"""Read the collector's incidents after a replay and score each detector per session."""

from __future__ import annotations

from collections import defaultdict

from bench.replay.model import Run

# which detector answers which label (only labels a data set states or a stated rule derives)
LABEL_OF_DETECTOR = {"loop": "loop", "infrastructure": "infrastructure"}
FINDING_EVENTS = ("opened", "updated", "escalated")  # one event per finding


def collect(sql, trace_ids: dict[str, str], sessions: set[str]) -> dict:
    """Findings per (detector, kind) -> sessions, via the event's session id, else its trace id
    (a GenAI session id arrives last, on the root span: issue 13)."""
    incidents = {
        r["incident_id"]: r
        for r in sql(
            "SELECT incident_id, detector, kind, severity, title, session_id, trace_id, service "
            "FROM incidents_current"
        )
    }
    events = sql(
        "SELECT incident_id, event, session_id, trace_id FROM incident_events "
        f"WHERE event IN {FINDING_EVENTS!r}"
    )
    flagged: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    unattributed: dict[str, int] = defaultdict(int)
    by_trace_only = 0
    examples: dict[tuple[str, str], dict] = {}
    for ev in events:
        inc = incidents.get(ev["incident_id"])
        if inc is None:
            continue
        session = ev["session_id"] if ev["session_id"] in sessions else None
        if session is None:
            session = trace_ids.get((ev["trace_id"] or "").lower())
            by_trace_only += session is not None
        if session is None:
            unattributed[inc["detector"]] += 1
            continue
        flagged[inc["detector"]][inc["kind"]].add(session)
        examples.setdefault(
            (inc["detector"], session),
            {
                "incident_id": inc["incident_id"],
                "kind": inc["kind"],
                "title": inc["title"],
            },
        )
    return {
        "incidents": list(incidents.values()),
        "flagged": flagged,
        "unattributed": dict(unattributed),
        "events": len(events),
        "attributed_by_trace_only": by_trace_only,
        "examples": examples,
    }


def score(
    runs: list[Run], found: dict, detectors: list[str], conventions: dict[str, str] | None = None
) -> list[dict]:
    """Per detector: flagged per 100 normal sessions (also per convention and per data set);
    recall/precision where a label applies."""
    normal = {r.session_id for r in runs if not r.labels}
    groups: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        if not r.labels:
            groups[r.dataset].add(r.session_id)
            if conventions:
                groups[conventions[r.session_id]].add(r.session_id)
    labelled = defaultdict(set)
    for r in runs:
        for label in r.labels:
            labelled[label].add(r.session_id)
    rows = []
    for det in detectors:
        kinds = found["flagged"].get(det, {})
        flagged = set().union(*kinds.values()) if kinds else set()
        row = {
            "detector": det,
            "sessions_flagged": len(flagged),
            "normal_sessions": len(normal),
            "normal_flagged": len(flagged & normal),
            "per_100_normal": round(100 * len(flagged & normal) / len(normal), 2)
            if normal
            else None,
            "kinds": {k: len(v) for k, v in sorted(kinds.items())},
            "per_100_normal_by": {
                g: round(100 * len(flagged & members) / len(members), 2)
                for g, members in sorted(groups.items())
            },
            "unattributed_findings": found["unattributed"].get(det, 0),
        }
        label = LABEL_OF_DETECTOR.get(det)
        if label:
            positives = labelled.get(label, set())
            tp = len(flagged & positives)
            row.update(
                {
                    "label": label,
                    "labelled_sessions": len(positives),
                    "recall": round(tp / len(positives), 3) if positives else None,
                    "precision": round(tp / len(flagged), 3) if flagged else None,
                }
            )
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        f"{'detector':<20}{'flagged':>8}{'normal flagged':>16}{'/100 normal':>13}"
        f"{'label (n)':>20}{'recall':>8}{'precision':>10}  kinds"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        label = (
            f"{r.get('label', '-')} ({r.get('labelled_sessions', '-')})" if r.get("label") else "-"
        )
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(
            f"{r['detector']:<20}{r['sessions_flagged']:>8}"
            f"{str(r['normal_flagged']) + '/' + str(r['normal_sessions']):>16}"
            f"{fmt(r['per_100_normal']):>13}{label:>20}{fmt(r.get('recall')):>8}"
            f"{fmt(r.get('precision')):>10}  "
            + ", ".join(f"{k} {v}" for k, v in r["kinds"].items())
        )
    return "\n".join(lines)
