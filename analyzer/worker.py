"""The detectors in a process of their own: both ends of the pipe.

Why: the collector's ingest path (decode, normalise, hand rows to ClickHouse) keeps one core
busy holding the GIL; the detectors cost as much again per span. In a second process they run on
the second core, and the collector's share of detection is one ``orjson.dumps`` of the batch's
step columns (~0.4 µs per span) — see ``bench/README.md`` for the before/after.

Parent (``DetectionProcess``, used by ``Analyzer``): starts ``python -m analyzer.worker``, sends
each batch's step columns with the collector's clock, and awaits the findings. Replies come in
order, one per batch, so a FIFO of futures matches them. ``drain()`` on the child's stdin is the
backpressure: when detection falls behind, ingest waits for it instead of queueing without end.
If the child dies, its batches fail with ``DetectionUnavailable`` (the spans are stored anyway)
and the next batch starts a new child; detector state starts afresh then (logged).

Child (``main``): reads frames from stdin, runs ``Detection``, writes findings to stdout (stdout
is the protocol; ``print`` goes to stderr, where logging goes too).

Frames: 4-byte big-endian length, 1-byte kind, payload. ``B`` batch (8-byte clock, 1-byte
replay flag, orjson of the step columns) -> ``F`` reply (pickle of the findings: a trusted pipe
to our own child); ``P`` policy (orjson of the policy file's data, or ``null`` for none).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
import sys
from collections import deque

import orjson

from analyzer.engine import Detection, DetectionUnavailable, default_detectors
from analyzer.finding import Finding
from collector.gc_tuning import tune_gc

log = logging.getLogger("agentwatch.detection")

_HEADER = struct.Struct("!IB")
_BATCH = struct.Struct("!QB")
_STDOUT_LIMIT = 256 * 1024 * 1024  # one reply frame at most (findings of one batch)


_PIPE_BYTES = 1 << 20


def _widen(stream) -> None:
    """A 1 MiB pipe instead of Linux's 64 KiB: a batch's frame (~130 KB for 512 spans) goes in
    one write instead of several, each a wake-up of the event loop."""
    try:
        import fcntl

        transport = stream.transport if hasattr(stream, "transport") else stream._transport
        fd = transport.get_extra_info("pipe").fileno()
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (OSError, AttributeError, ImportError):
        pass  # not Linux, or not allowed: the default pipe works, with more wake-ups


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), kind[0]) + payload


class DetectionProcess:
    """``Detection`` behind a pipe, with the same ``observe_columns`` interface."""

    def __init__(self, policy_data: dict | None = None, max_sessions: int = 100_000) -> None:
        self.policy_data = policy_data
        self.max_sessions = max_sessions
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: deque[asyncio.Future] = deque()
        self._reader: asyncio.Task | None = None
        self._starting: asyncio.Lock | None = None
        self.restarts = 0

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "analyzer.worker",
            str(self.max_sessions),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_STDOUT_LIMIT,
        )
        for pipe in (self._proc.stdin, self._proc.stdout):
            _widen(pipe)
        self._reader = asyncio.get_running_loop().create_task(self._read_replies(self._proc))
        self._send(_frame(b"P", orjson.dumps(self.policy_data)))

    def _send(self, frame: bytes) -> None:
        self._proc.stdin.write(frame)

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self._reader.done()

    async def _ensure_running(self) -> None:
        if self._alive():
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._alive():
                return
            self.restarts += 1
            log.error(
                "detection process is down: starting a new one (detector state starts afresh)"
            )
            await self.start()

    async def observe_columns(self, columns: dict, now: int, replay: bool = False) -> list[Finding]:
        await self._ensure_running()
        future = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._send(_frame(b"B", _BATCH.pack(now, replay) + orjson.dumps(columns)))
        try:
            await self._proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            raise DetectionUnavailable(f"cannot send to the detection process: {exc}") from None
        return await future

    async def set_policy(self, policy_data: dict | None) -> None:
        """Sessions first seen from now on get this policy (as in the collector's process)."""
        self.policy_data = policy_data
        if self._proc is not None and self._proc.returncode is None:
            self._send(_frame(b"P", orjson.dumps(policy_data)))
            await self._proc.stdin.drain()

    async def _read_replies(self, proc: asyncio.subprocess.Process) -> None:
        try:
            while True:
                header = await proc.stdout.readexactly(_HEADER.size)
                length, _kind = _HEADER.unpack(header)
                findings = pickle.loads(await proc.stdout.readexactly(length))
                future = self._pending.popleft()
                if not future.done():
                    future.set_result(findings)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            code = await proc.wait()
            if self._pending:
                log.error("detection process exited (code %s) with %d batches unanswered",
                          code, len(self._pending))  # fmt: skip
            while self._pending:
                future = self._pending.popleft()
                if not future.done():
                    future.set_exception(DetectionUnavailable(f"detection process exited ({code})"))

    async def close(self) -> None:
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._proc.stdin.close()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._reader is not None:
            await self._reader


def main() -> None:
    """The child: frames in on stdin, findings out on stdout, until stdin closes."""
    from analyzer.policy import DEFAULT_POLICY, parse_policy
    from analyzer.session import SessionTable
    from analyzer.step import steps_from_columns

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    sys.stdout = sys.stderr  # stdout carries frames only
    max_sessions = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    current = {"policy": None}

    def policy_for(service: str, agent: str):
        policy = current["policy"]
        return DEFAULT_POLICY if policy is None else policy.for_agent(service, agent)

    detection = Detection(
        default_detectors(), SessionTable(max_sessions=max_sessions, policy_for=policy_for)
    )
    tune_gc()
    while True:
        header = inp.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the collector closed the pipe: done
        length, kind = _HEADER.unpack(header)
        payload = inp.read(length)
        if kind == ord("P"):
            data = orjson.loads(payload)
            current["policy"] = None if data is None else parse_policy(data, "<collector policy>")
            continue
        now, replay = _BATCH.unpack_from(payload)
        try:
            columns = orjson.loads(memoryview(payload)[_BATCH.size :])
            findings = detection.observe(steps_from_columns(columns), now, bool(replay))
        except Exception:  # a detector bug must not take detection down for every later batch
            log.exception("detection failed on a batch; its findings are lost")
            findings = []
        reply = pickle.dumps(findings, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_frame(b"F", reply))
        out.flush()


if __name__ == "__main__":
    main()
