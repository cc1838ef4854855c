"""One log line per kind of event per minute: what on-call reads in the log, without a flood.

An incident opening, a page sent, spans refused: each is worth a line, but a looping agent or a
misconfigured exporter repeats them hundreds of times a second. ``RateLimitedLog`` writes the
first line of a key, then at most one per ``interval_s``; the next line written says how many
like it were left out.

>>> import logging, sys
>>> logger = logging.getLogger("doctest.ratelog")
>>> logger.addHandler(logging.StreamHandler(sys.stdout)); logger.setLevel(logging.INFO)
>>> now = [0.0]
>>> spans = RateLimitedLog(logger, interval_s=60, clock=lambda: now[0])
>>> [spans.log(logging.WARNING, "grpc", "refused %d spans", n) for n in range(3)]
refused 0 spans
[True, False, False]
>>> now[0] = 61.0
>>> spans.log(logging.WARNING, "grpc", "refused %d spans", 9)
refused 9 spans (2 more like it in the last 60 s not logged)
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

_MAX_KEYS = 1000  # beyond it the oldest key is forgotten (its count of left-out lines too)


class RateLimitedLog:
    """``log(level, key, msg, *args)``: at most one line per ``key`` per ``interval_s``."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._keys: dict[Hashable, list] = {}  # key -> [time of the last line, lines left out]

    def log(self, level: int, key: Hashable, msg: str, *args) -> bool:
        """Write the line unless one of ``key`` was written less than ``interval_s`` ago;
        True when written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        seen = self._keys.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        left_out = seen[1] if seen is not None else 0
        if left_out:
            msg += f" ({left_out} more like it in the last {self.interval_s:g} s not logged)"
        self._keys.pop(key, None)
        self._keys[key] = [now, 0]
        if len(self._keys) > _MAX_KEYS:
            del self._keys[next(iter(self._keys))]
        self.logger.log(level, msg, *args, stacklevel=2)  # the caller's file and line
        return True
