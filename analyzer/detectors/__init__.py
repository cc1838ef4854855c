"""Streaming detectors: one file each, pure, clock injected, state bounded per session.

Every detector has a ``name``, optionally ``kinds`` (the step kinds it looks at), and
``observe(step, session, now_ns) -> Finding | None``; its
thresholds come in through its constructor (defaults from DESIGN.md §5, overridden per agent by
policy). A detector keeps per-session state in ``session.state(name, factory)`` and nothing
unbounded anywhere else.
"""

from __future__ import annotations

from typing import Protocol

from analyzer.finding import Finding
from analyzer.session import SessionState
from analyzer.step import Step


class Detector(Protocol):
    name: str
    # Optional ``kinds``: the step kinds it looks at (e.g. {"tool"}); the engine skips the rest.

    def observe(self, step: Step, session: SessionState, now_ns: int) -> Finding | None: ...
