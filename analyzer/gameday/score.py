"""A drill's score: each step of the response timed from the first span sent, against its target
and against the earlier drills of the same scenario. Pure: the times come from the store
(``analyzer.gameday.repository``).

Targets (issue 16): every step within ``STEP_TARGET_S`` (5 minutes) of the first span, and
containment in force within ``CONTAIN_TARGET_S`` (60 s) of the decision, the acknowledgement
(containment before the ack, a policy action's, is within it).

>>> times = {"incident": 2.0, "paged": 3.5, "acknowledged": 40.0, "contained": 130.0,
...          "step_named": 200.0, "case_captured": 250.0, "resolved": 320.0}
>>> rows = score(times, [{"incident": 3.0, "contained": 90.0}], done=True)
>>> [(r["step"], r["verdict"]) for r in rows][:4]
[('incident', 'PASS'), ('paged', 'PASS'), ('acknowledged', 'PASS'), ('contained', 'MISS')]
>>> rows[3]["why"], rows[-1]["verdict"]
('90 s after the ack (target 60 s)', 'MISS')
>>> rows[0]["previous_s"], rows[0]["best_s"], rows[0]["change"]
(3.0, 3.0, 'better')
>>> score({"incident": 2.0}, [], done=False)[1]["verdict"]
'PENDING'
"""

from __future__ import annotations

#: the steps of a response, in order, with what the report calls them
STEPS = (
    ("incident", "incident opened"),
    ("paged", "page delivered"),
    ("acknowledged", "acknowledged"),
    ("contained", "containment in force"),
    ("step_named", "off-rails step named"),
    ("case_captured", "regression case captured"),
    ("resolved", "resolved"),
)
STEP_NAMES = tuple(name for name, _ in STEPS)
STEP_TARGET_S = 300.0
CONTAIN_TARGET_S = 60.0


def score(times: dict[str, float | None], earlier: list[dict], done: bool) -> list[dict]:
    """One row per step: seconds from the first span (None: not yet), the verdict (``PASS``,
    ``MISS``, or ``PENDING`` while the drill runs), and the earlier drills' previous and best
    times for it. ``earlier``: the earlier drills' times, oldest first."""
    rows = []
    for name, label in STEPS:
        seconds = times.get(name)
        verdict, why = _verdict(name, seconds, times, done)
        history = [t[name] for t in earlier if t.get(name) is not None]
        previous = history[-1] if history else None
        best = min(history) if history else None
        change = ""
        if seconds is not None and previous is not None:
            change = "better" if seconds < previous else "worse" if seconds > previous else "same"
        rows.append(
            {
                "step": name,
                "label": label,
                "seconds": seconds,
                "target_s": STEP_TARGET_S,
                "verdict": verdict,
                "why": why,
                "previous_s": previous,
                "best_s": best,
                "change": change,
            }
        )
    return rows


def _verdict(name: str, seconds: float | None, times: dict, done: bool) -> tuple[str, str]:
    if seconds is None:
        return ("MISS", "never happened") if done else ("PENDING", "not yet")
    if seconds > STEP_TARGET_S:
        return "MISS", f"{seconds:.0f} s after the first span (target {STEP_TARGET_S:.0f} s)"
    if name == "contained":
        decided = times.get("acknowledged")
        if decided is not None and seconds - decided > CONTAIN_TARGET_S:
            return (
                "MISS",
                f"{seconds - decided:.0f} s after the ack (target {CONTAIN_TARGET_S:.0f} s)",
            )
    return "PASS", ""


def overall(rows: list[dict]) -> str:
    """PASS when every step passed, MISS when one missed, else PENDING."""
    verdicts = {row["verdict"] for row in rows}
    return "MISS" if "MISS" in verdicts else "PENDING" if "PENDING" in verdicts else "PASS"
