"""The detectors in a process of their own: both ends of the pipe.

Why: the collector's ingest path (decode, normalise, hand rows to ClickHouse) keeps one core
busy holding the GIL; the detectors cost as much again per span. In a second process they run on
the second core, and the collector's share of detection is one ``orjson.dumps`` of the batch's
step columns (~0.4 µs per span) — see ``bench/README.md`` for the before/after.

Parent (``DetectionProcess``, used by ``Analyzer``): starts ``python -m analyzer.worker``, sends
each batch's step columns with the collector's clock and a batch id, and awaits the reply with that
id. The child answers every batch, with its findings or with the error detection raised, so one bad
batch fails alone and cannot put later replies out of step. ``drain()`` on the child's stdin is the
backpressure: when detection falls behind, ingest waits for it instead of queueing without end.
Anything the parent cannot place (a reply to no pending batch, a frame it cannot read) or the
child dying fails every pending batch with ``DetectionUnavailable`` (the spans are stored anyway)
and ends the child; the next batch starts a new one, with detector state afresh (logged).

Child (``main``): reads frames from stdin, runs ``Detection``, writes replies to stdout (stdout
is the protocol; ``print`` goes to stderr, where logging goes too).

Frames: 4-byte big-endian length, 1-byte kind, payload. ``B`` batch (8-byte batch id, 8-byte
clock, 1-byte replay flag, orjson of the step columns) -> ``F`` findings (8-byte batch id, pickle
of the findings: a trusted pipe to our own child) or ``E`` error (8-byte batch id, UTF-8 text);
``P`` policy (orjson of the policy file's data, or ``null`` for none), not answered. ``S`` seed
(8-byte clock, orjson of the ``StoredSession`` rows ``analyzer.baselines`` read), not answered:
the parent keeps the latest and sends it again to a restarted child, after the policy, so the
new child's baselines start from the store's last reading instead of cold.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import struct
import sys

import orjson

from analyzer.detectors.seeding import StoredSession
from analyzer.engine import Detection, DetectionUnavailable, default_detectors
from analyzer.finding import Finding
from analyzer.policy import DEFAULT_POLICY, parse_policy
from analyzer.session import SessionTable
from analyzer.step import steps_from_columns
from collector.gc_tuning import tune_gc

log = logging.getLogger("agentwatch.detection")

_HEADER = struct.Struct("!IB")
_BATCH = struct.Struct("!QQB")  # batch id, clock, replay
_ID = struct.Struct("!Q")  # the batch id that starts a reply
_FINDINGS, _ERROR = ord("F"), ord("E")
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
        self._pending: dict[int, asyncio.Future] = {}  # the current child's batches, by id
        self._ids = itertools.count(1)
        self._reader: asyncio.Task | None = None
        self._starting: asyncio.Lock | None = None
        self._seed: bytes | None = None  # the latest seed frame, for a restarted child
        self.restarts = 0

    async def start(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "analyzer.worker",
            str(self.max_sessions),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_STDOUT_LIMIT,
        )
        for pipe in (proc.stdin, proc.stdout):
            _widen(pipe)
        self._proc = proc
        self._pending = {}
        self._reader = asyncio.get_running_loop().create_task(
            self._read_replies(proc, self._pending)
        )
        self._send(_frame(b"P", orjson.dumps(self.policy_data)))
        if self._seed is not None:
            self._send(self._seed)

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
        try:
            payload = orjson.dumps(columns)
        except TypeError as exc:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
            raise DetectionUnavailable(f"cannot send this batch to detection: {exc}") from None
        await self._ensure_running()
        batch_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        pending = self._pending
        pending[batch_id] = future
        try:
            self._send(_frame(b"B", _BATCH.pack(batch_id, now, replay) + payload))
            try:
                await self._proc.stdin.drain()
            except ConnectionError as exc:
                raise DetectionUnavailable(f"cannot send to the detection process: {exc}") from None
            return await future
        finally:
            if pending.pop(batch_id, None) is not None:  # not answered: cancelled, or not sent
                future.cancel()

    async def set_policy(self, policy_data: dict | None) -> None:
        """Sessions first seen from now on get this policy (as in the collector's process)."""
        self.policy_data = policy_data
        if self._proc is not None and self._proc.returncode is None:
            self._send(_frame(b"P", orjson.dumps(policy_data)))
            await self._proc.stdin.drain()

    async def seed_baselines(self, sessions: list[StoredSession], now: int) -> None:
        """Seed the child's baselines (``Detection.seed``); kept for a child started later."""
        rows = orjson.dumps([tuple(session) for session in sessions])
        self._seed = _frame(b"S", _ID.pack(now) + rows)
        if self._alive():
            self._send(self._seed)
            await self._proc.stdin.drain()

    async def _read_replies(self, proc: asyncio.subprocess.Process, pending: dict) -> None:
        """Settle each batch's future with its reply, until the child ends or breaks protocol."""
        why = "exited"
        try:
            while True:
                header = await proc.stdout.readexactly(_HEADER.size)
                length, kind = _HEADER.unpack(header)
                payload = await proc.stdout.readexactly(length)
                (batch_id,) = _ID.unpack_from(payload)
                if kind not in (_FINDINGS, _ERROR) or batch_id not in pending:
                    raise ValueError(f"a reply of kind {kind} to batch {batch_id}, not pending")
                if kind == _FINDINGS:
                    findings = pickle.loads(memoryview(payload)[_ID.size :])
                future = pending.pop(batch_id)
                if future.done():
                    continue  # its exporter has gone
                if kind == _FINDINGS:
                    future.set_result(findings)
                else:
                    text = payload[_ID.size :].decode(errors="replace")
                    future.set_exception(DetectionUnavailable(f"detection failed on it: {text}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # whatever it is, the stream is out of step from here on
            why = f"broke protocol ({exc}) and was stopped"
            log.error("detection process %s: starting a new one", why)
            proc.kill()
        finally:
            code = await proc.wait()
            if pending:
                log.error("detection process %s (code %s) with %d batches unanswered",
                          why, code, len(pending))  # fmt: skip
            while pending:
                _, future = pending.popitem()
                if not future.done():
                    future.set_exception(DetectionUnavailable(f"detection process {why} ({code})"))

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
        if len(payload) < length:
            return
        if kind == ord("P"):
            data = orjson.loads(payload)
            current["policy"] = None if data is None else parse_policy(data, "<collector policy>")
            continue
        if kind == ord("S"):
            (now,) = _ID.unpack_from(payload)
            rows = orjson.loads(memoryview(payload)[_ID.size :])
            try:
                detection.seed([StoredSession(*row) for row in rows], now)
            except Exception:  # the baselines carry on unseeded; detection must not stop
                log.exception("baselines not seeded from %d stored sessions", len(rows))
            continue
        if kind != ord("B") or length < _BATCH.size:
            sys.exit(f"detection process: unexpected frame {kind} of {length} bytes")
        batch_id, now, replay = _BATCH.unpack_from(payload)
        try:
            columns = orjson.loads(memoryview(payload)[_BATCH.size :])
            findings = detection.observe(steps_from_columns(columns), now, bool(replay))
            reply = _frame(
                b"F", _ID.pack(batch_id) + pickle.dumps(findings, pickle.HIGHEST_PROTOCOL)
            )
        except Exception as exc:  # a detector bug must not take detection down for later batches
            log.exception("detection failed on a batch; its findings are lost")
            reply = _frame(
                b"E",
                _ID.pack(batch_id) + f"{type(exc).__name__}: {exc}"[:500].encode(errors="replace"),
            )
        out.write(reply)
        out.flush()


if __name__ == "__main__":
    main()
