"""The silence stage: is a firing muted now, and by which silence.

Silences are rows of ``silences``, written by the API whether or not this collector pages; the
stage reads the ones not ended every ``refresh_s`` (and at once when the API changes one), and
notes a muted firing once per silence on the incident's timeline (``page_silenced``). A silence
stored before matchers were RE2's that RE2 refuses is not applied, and said so once.
"""

from __future__ import annotations

import logging

import orjson

from analyzer.paging.model import Changes, Firing, page_event
from analyzer.paging.routing import Silence, parse_matcher, silenced_by

log = logging.getLogger("agentwatch.paging")


class Silencer:
    def __init__(self, store, refresh_s: float = 15.0) -> None:
        self._store = store
        self._refresh_ns = int(refresh_s * 1e9)
        self.silences: list[Silence] = []
        self._refused: set[str] = set()
        self._loaded_ns: int | None = None

    async def load(self, now_ns: int) -> None:
        silences = []
        for row in await self._store.silence_rows(now_ns):
            try:
                silences.append(silence_from_row(row))
            except ValueError as exc:  # stored before matchers were RE2's: refused, said once
                if row["silence_id"] not in self._refused:
                    self._refused.add(row["silence_id"])
                    log.error("silence %s is not applied: %s", row["silence_id"], exc)
        self.silences = silences
        self._loaded_ns = now_ns

    async def refresh(self, now_ns: int) -> None:
        """Read the silences again if the last read is ``refresh_s`` old."""
        if self._loaded_ns is None or now_ns - self._loaded_ns >= self._refresh_ns:
            await self.load(now_ns)

    def mutes(self, firing: Firing, labels: dict[str, str], now_ns: int, changes: Changes) -> bool:
        """True if a silence mutes ``firing`` now (its first muting per silence is noted)."""
        silence = silenced_by(self.silences, labels, now_ns)
        if silence is None:
            return False
        if firing.noted_silence != silence.silence_id:
            firing.noted_silence = silence.silence_id
            detail = f"silence {silence.silence_id}"
            changes.events.append(page_event(firing, "page_silenced", detail, now_ns))
        return True

    def next_change_ns(self, now_ns: int) -> int:
        """When what mutes may change next: a silence starts or ends, or the next read."""
        loaded = now_ns if self._loaded_ns is None else self._loaded_ns
        edges = [s.starts_ns for s in self.silences if s.starts_ns > now_ns]
        edges += [s.ends_ns for s in self.silences if s.ends_ns > now_ns]
        return min([loaded + self._refresh_ns, *edges])


def silence_from_row(row: dict) -> Silence:
    return Silence(
        row["silence_id"],
        tuple(parse_matcher(m) for m in orjson.loads(row["matchers"])),
        int(row["starts_ns"]),
        int(row["ends_ns"]),
        row.get("created_by", ""),
        row.get("comment", ""),
    )
