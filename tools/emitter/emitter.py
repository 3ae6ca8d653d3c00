"""Reference emitter: an OpenAI-compatible streaming server with a fixed, known TTFT and ITL.

servelab measures its own client against this server (issue #3, "Calibration"). Token k of a request is
written at the absolute time ``received + ttft + k * itl`` (monotonic ns), so whatever a client measures
beyond that schedule is the client's error, and the emitter's own lateness is served by
``GET /emitter/stats``. It is written on raw asyncio Protocols (uvloop when installed) with one shared
timer wheel, so that it is not the bottleneck of a Python client.

Standard library only (uvloop optional). Run ``python tools/emitter/emitter.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import heapq
import json
import logging
import math
import mmap
import os
import random
import resource
import signal
import socket
import struct
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field
from http import HTTPStatus

log = logging.getLogger("servelab.emitter")
now_ns = time.monotonic_ns  # CLOCK_MONOTONIC, the same clock as servelab.clock.now_ns

TOKEN_TEXT = " tok"
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
FLUSH_INTERVAL_S = 0.1  # stats reach shared memory (and records reach disk) this often


# ---------------------------------------------------------------------------------------------------------
# Configuration


class EmitterError(Exception):
    """A bad flag or header value; the message names the value and the fix."""


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one request; an empty Fault means nothing does."""

    status: int | None = None  # answer with this HTTP status instead of a completion
    malformed: bool = False  # the first token event carries truncated JSON
    reset_after: int | None = None  # token chunks sent before the connection is reset (TCP RST)
    stall_after: int | None = None  # token chunks sent before the stream stops, socket left open
    error_event: str | None = None  # after one token chunk, an in-stream error of this shape (ERROR_EVENTS), then [DONE]

    @property
    def active(self) -> bool:
        return self != NO_FAULT

    def describe(self) -> str:
        """The fault in the syntax of the x-emitter-fault header, e.g. 'status=503' or 'none'."""
        parts = []
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.malformed:
            parts.append("malformed")
        if self.reset_after is not None:
            parts.append(f"reset-after={self.reset_after}")
        if self.stall_after is not None:
            parts.append(f"stall-after={self.stall_after}")
        if self.error_event is not None:
            parts.append(f"error-event={self.error_event}")
        return ",".join(parts) or "none"


NO_FAULT = Fault()

ERROR_EVENTS = ("error-key", "error-code", "object-error", "event-error", "no-choices")
"""The shapes of an error sent inside a 200 stream, as servers spell them (see Completion.error_event_frame)."""
LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
"""The SSE line ends the emitter can write; all three are legal in the SSE specification."""


def parse_fault(text: str, source: str) -> Fault:
    """Parse 'status=503', 'malformed', 'reset-after=3', 'stall-after=2' (comma-separated) or 'none'."""
    values: dict[str, object] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item or item == "none":
            continue
        key, _, value = item.partition("=")
        key = key.strip().lower()
        try:
            if key == "malformed" and not value:
                values["malformed"] = True
            elif key == "status":
                values["status"] = _status_code(int(value))
            elif key in ("reset-after", "stall-after") and int(value) >= 0:
                values[key.replace("-", "_")] = int(value)
            elif key == "error-event" and value in ERROR_EVENTS:
                values["error_event"] = value
            else:
                raise ValueError(item)
        except ValueError:
            raise EmitterError(
                f"bad fault {item!r} in {source}; use status=CODE (400-599), malformed, reset-after=N, "
                f"stall-after=N, error-event=KIND ({'|'.join(ERROR_EVENTS)}) or none, comma-separated"
            ) from None
    return Fault(**values)  # type: ignore[arg-type]


def _status_code(code: int) -> int:
    if not 400 <= code <= 599:
        raise ValueError(code)
    return code


@dataclass(frozen=True)
class EmitterConfig:
    """Everything the emitter is told at start; per-request headers may override timing and fault."""

    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "servelab-emitter"
    workers: int = 1
    tick_us: float = 200.0
    timer: str = "auto"
    fault: Fault = field(default_factory=Fault)
    fail_rate: float = 0.0
    seed: int | None = None
    record_path: str | None = None
    loop: str = "auto"
    max_streams: int | None = None
    line_ends: str = "lf"


def parse_args(argv: list[str] | None = None) -> EmitterConfig:
    """Turn command-line flags into an EmitterConfig; the only place that reads them."""
    parser = argparse.ArgumentParser(
        prog="emitter.py",
        description="OpenAI-compatible streaming server with a fixed TTFT and ITL, for client calibration.",
    )
    parser.add_argument(
        "--ttft-ms", type=float, default=20.0, help="time to first token after the request is received (ms)"
    )
    parser.add_argument("--itl-ms", type=float, default=5.0, help="time between token chunks (ms)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--model", default="servelab-emitter", help="model id served by /v1/models")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument(
        "--tick-us",
        type=float,
        default=200.0,
        help="timer wheel slot: deadlines in one slot are written in one pass (us)",
    )
    parser.add_argument(
        "--timer",
        choices=["auto", "timerfd", "loop"],
        default="auto",
        help="timerfd: ns-precise Linux alarm; loop: the event loop's ms timer",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop; auto uses uvloop when installed",
    )
    faults = parser.add_argument_group(
        "fault injection", "apply to --fail-rate of requests (default all, when a fault is given)"
    )
    faults.add_argument(
        "--fail-rate",
        type=float,
        default=None,
        help="fraction of requests that get the fault; alone it means --status 500",
    )
    faults.add_argument(
        "--status", type=int, default=None, help="answer with this HTTP status (e.g. 429, 500, 503)"
    )
    faults.add_argument(
        "--malformed", action="store_true", help="the first token event carries truncated JSON"
    )
    faults.add_argument(
        "--reset-after", type=int, default=None, metavar="N", help="reset the connection after N token chunks"
    )
    faults.add_argument(
        "--stall-after",
        type=int,
        default=None,
        metavar="N",
        help="stop sending after N token chunks, socket left open",
    )
    faults.add_argument(
        "--error-event",
        choices=ERROR_EVENTS,
        default=None,
        help="after one token chunk, an error inside the 200 stream, then [DONE]: an error key, FastChat's "
        "error_code, a top-level object: error, an SSE `event: error`, or a chunk without choices",
    )
    faults.add_argument("--seed", type=int, default=None, help="seed of the --fail-rate draw")
    parser.add_argument(
        "--max-streams",
        type=int,
        default=None,
        metavar="N",
        help="answer at most N completions at once per worker, as a server with N slots; later ones wait in "
        "order, and their TTFT starts when a slot frees",
    )
    parser.add_argument(
        "--line-ends",
        choices=sorted(LINE_ENDS),
        default="lf",
        help="the SSE line end: lf (as vLLM), crlf, or a bare cr (legal SSE that few servers write)",
    )
    parser.add_argument(
        "--record",
        default=None,
        metavar="PATH",
        help="append one JSON line per request with its write times (monotonic ns)",
    )
    args = parser.parse_args(argv)

    problems = []
    if args.ttft_ms < 0 or args.itl_ms < 0:
        problems.append("--ttft-ms and --itl-ms must be >= 0")
    if args.workers < 1:
        problems.append(f"--workers {args.workers}: must be >= 1")
    if args.max_streams is not None and args.max_streams < 1:
        problems.append(f"--max-streams {args.max_streams}: must be >= 1")
    if args.tick_us < 0:
        problems.append(f"--tick-us {args.tick_us}: must be >= 0")
    if args.status is not None and not 400 <= args.status <= 599:
        problems.append(f"--status {args.status}: must be an HTTP error status, 400-599 (e.g. 429, 500, 503)")
    for flag, value in (("--reset-after", args.reset_after), ("--stall-after", args.stall_after)):
        if value is not None and value < 0:
            problems.append(f"{flag} {value}: must be >= 0")
    if args.fail_rate is not None and not 0.0 <= args.fail_rate <= 1.0:
        problems.append(f"--fail-rate {args.fail_rate}: must be between 0 and 1")
    if problems:
        parser.error("; ".join(problems))

    fault = Fault(args.status, args.malformed, args.reset_after, args.stall_after, args.error_event)
    if args.fail_rate is None:
        fail_rate = 1.0 if fault.active else 0.0
    else:
        fail_rate = args.fail_rate
        if not fault.active:
            fault = Fault(status=500)
    return EmitterConfig(
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        host=args.host,
        port=args.port,
        model=args.model,
        workers=args.workers,
        tick_us=args.tick_us,
        timer=args.timer,
        fault=fault,
        fail_rate=fail_rate,
        seed=args.seed,
        record_path=args.record,
        loop=args.loop,
        max_streams=args.max_streams,
        line_ends=args.line_ends,
    )


# ---------------------------------------------------------------------------------------------------------
# Statistics: counters and a lateness histogram per worker, summed over workers through shared memory

# Lateness buckets: 1 us wide to 1 ms, 10 us to 10 ms, 100 us to 100 ms, 1 ms to 1 s, then one overflow.
LATENESS_BUCKETS = 3701
COUNTERS = (
    "connections",
    "requests_completions",
    "requests_chat",
    "requests_other",
    "requests_faulted",
    "tokens",
    "writes",
    "lateness_count",
    "lateness_sum_ns",
    "lateness_max_ns",
    "disconnects",
    "write_pauses",
    "streams_active",
)
ROW_LEN = len(COUNTERS) + LATENESS_BUCKETS
HEADER_LEN = 1  # the reset generation


def lateness_bucket(lateness_us: int) -> int:
    """Histogram bucket of a lateness in us."""
    if lateness_us < 1000:
        return lateness_us if lateness_us > 0 else 0
    if lateness_us < 10_000:
        return 1000 + (lateness_us - 1000) // 10
    if lateness_us < 100_000:
        return 1900 + (lateness_us - 10_000) // 100
    if lateness_us < 1_000_000:
        return 2800 + (lateness_us - 100_000) // 1000
    return 3700


def bucket_midpoint_us(bucket: int) -> float:
    """Middle of a histogram bucket, in us."""
    if bucket < 1000:
        return bucket + 0.5
    if bucket < 1900:
        return 1000 + (bucket - 1000) * 10 + 5
    if bucket < 2800:
        return 10_000 + (bucket - 1900) * 100 + 50
    if bucket < 3700:
        return 100_000 + (bucket - 2800) * 1000 + 500
    return 1_000_000.0


class Stats:
    """This worker's counters since the last reset; the hot path bumps attributes directly."""

    __slots__ = (*COUNTERS, "hist", "generation")

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.hist = [0] * LATENESS_BUCKETS
        self.generation = 0

    def add_write(self, written_ns: int, deadline_ns: int, itl_ns: int, tokens: int) -> None:
        """Count one write of `tokens` tokens; token k of it was due at deadline_ns + k * itl_ns."""
        self.writes += 1
        self.tokens += tokens
        self.lateness_count += tokens
        hist = self.hist
        for index in range(tokens):
            lateness = written_ns - deadline_ns - index * itl_ns
            self.lateness_sum_ns += lateness
            if lateness > self.lateness_max_ns:
                self.lateness_max_ns = lateness
            us = lateness // 1000
            hist[us if 0 <= us < 1000 else lateness_bucket(us)] += 1

    def clear(self) -> None:
        """Zero everything except the streams_active gauge."""
        for name in COUNTERS:
            if name != "streams_active":
                setattr(self, name, 0)
        self.hist = [0] * LATENESS_BUCKETS

    def row(self) -> array:
        values = array("q", [getattr(self, name) for name in COUNTERS])
        values.extend(self.hist)
        return values


class SharedStats:
    """One row of counters per worker in anonymous shared memory, created before the workers fork."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._memory = mmap.mmap(-1, 8 * (HEADER_LEN + workers * ROW_LEN))
        self.view = memoryview(self._memory).cast("q")

    def publish(self, worker: int, stats: Stats) -> None:
        """Copy this worker's stats into its row, first clearing them if another worker asked for a reset."""
        if self.view[0] != stats.generation:
            stats.clear()
            stats.generation = self.view[0]
        start = HEADER_LEN + worker * ROW_LEN
        self.view[start : start + ROW_LEN] = stats.row()

    def reset(self, worker: int, stats: Stats) -> None:
        """Start a new generation: every worker clears its stats at its next publish."""
        self.view[0] += 1
        zeros = array("q", bytes(8 * ROW_LEN))
        for index in range(self.workers):
            start = HEADER_LEN + index * ROW_LEN
            self.view[start : start + ROW_LEN] = zeros
        self.publish(worker, stats)

    def rows(self) -> list[list[int]]:
        return [
            self.view[HEADER_LEN + index * ROW_LEN : HEADER_LEN + (index + 1) * ROW_LEN].tolist()
            for index in range(self.workers)
        ]


def summarize(rows: list[list[int]]) -> dict[str, object]:
    """Counters summed over workers (max for lateness_max_ns) and lateness quantiles in us."""
    n = len(COUNTERS)
    totals = {name: sum(row[i] for row in rows) for i, name in enumerate(COUNTERS)}
    totals["lateness_max_ns"] = max(row[COUNTERS.index("lateness_max_ns")] for row in rows)
    hist = [sum(column) for column in zip(*(row[n:] for row in rows), strict=True)]
    count = totals["lateness_count"]
    max_us = totals["lateness_max_ns"] / 1000

    def quantile(q: float) -> float | None:
        if not count:
            return None
        target = max(1, math.ceil(q * count))
        seen = 0
        for bucket, hits in enumerate(hist):
            seen += hits
            if seen >= target:
                return round(min(bucket_midpoint_us(bucket), max_us), 1)
        return round(max_us, 1)

    lateness = {
        "count": count,
        "mean": round(totals["lateness_sum_ns"] / count / 1000, 1) if count else None,
        "p50": quantile(0.50),
        "p90": quantile(0.90),
        "p99": quantile(0.99),
        "p999": quantile(0.999),
        "max": round(max_us, 1) if count else None,
    }
    requests = {
        "completions": totals["requests_completions"],
        "chat": totals["requests_chat"],
        "other": totals["requests_other"],
        "faulted": totals["requests_faulted"],
    }
    requests["total"] = requests["completions"] + requests["chat"] + requests["other"]
    return {
        "requests": requests,
        "connections": totals["connections"],
        "streams_active": totals["streams_active"],
        "tokens": totals["tokens"],
        "writes": totals["writes"],
        "disconnects": totals["disconnects"],
        "write_pauses": totals["write_pauses"],
        "lateness_us": lateness,
        "per_worker": [
            {
                "requests": sum(
                    row[COUNTERS.index(name)]
                    for name in COUNTERS
                    if name.startswith("requests_") and name != "requests_faulted"
                ),
                "tokens": row[COUNTERS.index("tokens")],
                "streams_active": row[COUNTERS.index("streams_active")],
            }
            for row in rows
        ],
    }


# ---------------------------------------------------------------------------------------------------------
# Timing: one alarm and one timer wheel per worker


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFdAlarm:
    """An absolute CLOCK_MONOTONIC alarm with ns resolution (Linux timerfd), watched by the event loop.

    The event loop's own timers round to 1 ms (libuv and asyncio's selector both do); a timerfd in the
    loop's poll set wakes it at the exact deadline.
    """

    CLOCK_MONOTONIC = 1
    TFD_TIMER_ABSTIME = 1

    def __init__(self, loop: asyncio.AbstractEventLoop, callback) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.fd = libc.timerfd_create(self.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._settime = libc.timerfd_settime
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._callback = callback
        loop.add_reader(self.fd, self._on_readable)

    def arm(self, deadline_ns: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(max(deadline_ns, 1), 1_000_000_000)
        self._settime(self.fd, self.TFD_TIMER_ABSTIME, self._spec_ref, None)

    def _on_readable(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        self._callback()


class LoopAlarm:
    """The portable alarm: the event loop's timer (about 1 ms resolution)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, deadline_ns: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(max(0, deadline_ns - now_ns()) / 1e9, self._callback)


def make_alarm(kind: str, loop: asyncio.AbstractEventLoop, callback) -> TimerFdAlarm | LoopAlarm:
    if kind in ("auto", "timerfd"):
        try:
            return TimerFdAlarm(loop, callback)
        except (OSError, AttributeError) as error:
            if kind == "timerfd":
                raise EmitterError(
                    f"--timer timerfd is not available here ({error}); use --timer loop"
                ) from None
    return LoopAlarm(loop, callback)


class TimerWheel:
    """Deadlines rounded up to slots of tick_ns; every emission due in a slot is written in one pass.

    A heap holds the distinct slots, not the streams, so thousands of streams on one ITL cost a few
    heap operations per tick. A deadline is never served early: a slot fires at its end.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_ns: int, timer: str) -> None:
        self.tick_ns = max(1, tick_ns)
        self._slots: dict[int, list] = {}
        self._heap: list[int] = []
        self._armed_slot: int | None = None
        self._firing = False
        self.alarm = make_alarm(timer, loop, self._fire)
        self.passes = 0

    def add(self, emission, deadline_ns: int) -> None:
        slot = -(-deadline_ns // self.tick_ns)
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(emission)
            return
        self._slots[slot] = [emission]
        heapq.heappush(self._heap, slot)
        if not self._firing and (self._armed_slot is None or slot < self._armed_slot):
            self._armed_slot = slot
            self.alarm.arm(slot * self.tick_ns)

    def _fire(self) -> None:
        current_slot = now_ns() // self.tick_ns
        heap, slots = self._heap, self._slots
        due = []
        while heap and heap[0] <= current_slot:
            due.append(slots.pop(heapq.heappop(heap)))
        self._firing = True
        try:
            for bucket in due:
                for emission in bucket:
                    if emission.alive:
                        emission.fire()
        finally:
            self._firing = False
            self.passes += 1
            self._armed_slot = heap[0] if heap else None
            if heap:
                # A slot already past (the pass ran long) fires right after the loop polls I/O once.
                self.alarm.arm(heap[0] * self.tick_ns)


# ---------------------------------------------------------------------------------------------------------
# HTTP framing and OpenAI response shapes


def http_chunk(payload: bytes) -> bytes:
    """One chunk of HTTP/1.1 chunked transfer encoding."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse_frame(obj: object, line_end: bytes = b"\n") -> bytes:
    """One SSE event as one HTTP chunk, in the compact JSON pydantic (and so vLLM) writes."""
    return http_chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + line_end * 2)


def done_and_end(line_end: bytes = b"\n") -> bytes:
    """The [DONE] event and the end of the chunked body."""
    return http_chunk(b"data: [DONE]" + line_end * 2) + b"0\r\n\r\n"


DONE_AND_END = done_and_end()


def response_head(
    status: int, content_type: str | None, length: int | None, keep_alive: bool, extra: str = ""
) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    if content_type:
        lines.append(f"content-type: {content_type}")
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    head = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    return head.encode("latin-1")


def count_words(value: object) -> int:
    """prompt_tokens: whitespace-split words of text, or the length of token-id lists."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            return len(value)
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        return count_words(value.get("text", value.get("content", "")))
    return 0


@dataclass
class Completion:
    """One parsed completion request and how it will be answered."""

    endpoint: str  # "completions" or "chat"
    request_id: str
    model: str
    created: int
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    received_ns: int
    ttft_ns: int
    itl_ns: int
    fault: Fault
    client_request_id: str | None = None
    line_end: bytes = b"\n"

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.max_tokens,
            "completion_tokens": self.max_tokens,
        }

    def _chunk(self, choices: list, usage: dict | None = None) -> dict:
        """vLLM writes usage: null on every completions chunk, and on chat chunks only the usage chunk."""
        kind = "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        chunk = {
            "id": self.request_id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None or self.endpoint == "completions":
            chunk["usage"] = usage
        return chunk

    def token_frame(self, finish_reason: str | None) -> bytes:
        if self.endpoint == "chat":
            choice = {
                "index": 0,
                "delta": {"content": TOKEN_TEXT},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": TOKEN_TEXT,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        return sse_frame(self._chunk([choice]), self.line_end)

    def opening_frame(self) -> bytes:
        """vLLM's chat streams open with an empty assistant delta, sent with the first token."""
        if self.endpoint != "chat":
            return b""
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return sse_frame(self._chunk([choice]), self.line_end)

    def malformed_frame(self) -> bytes:
        good = self.token_frame(None)
        end = self.line_end * 2
        payload = good[good.index(b"data: ") : good.index(end)]
        return http_chunk(payload[: len(payload) // 2] + end)

    def error_event_frame(self) -> bytes:
        """An error inside the 200 stream, in the shape `fault.error_event` names."""
        kind, message = self.fault.error_event, f"injected fault: {self.fault.error_event}"
        if kind == "event-error":
            body = json.dumps({"message": message, "type": "server_error"}, separators=(",", ":")).encode()
            return http_chunk(b"event: error" + self.line_end + b"data: " + body + self.line_end * 2)
        shapes: dict[str | None, dict] = {
            "error-key": {"error": {"message": message, "type": "server_error", "param": None, "code": 500}},
            # FastChat's workers: the message rides in `text`, and [DONE] follows as if all went well.
            "error-code": {"text": f"**NETWORK ERROR DUE TO HIGH TRAFFIC.** ({message})", "error_code": 50001},
            "object-error": {"object": "error", "message": message, "type": "InternalServerError", "param": None, "code": 500},
            "no-choices": {"id": self.request_id, "object": "text_completion", "created": self.created, "model": self.model},
        }
        return sse_frame(shapes[kind], self.line_end)

    def closing_frames(self) -> bytes:
        """Usage chunk (when asked for), then [DONE], then the end of the chunked body."""
        usage = sse_frame(self._chunk([], self.usage), self.line_end) if self.include_usage else b""
        return usage + (DONE_AND_END if self.line_end == b"\n" else done_and_end(self.line_end))

    def full_body(self) -> bytes:
        """The non-streamed response: all max_tokens tokens at once."""
        text = TOKEN_TEXT * self.max_tokens
        if self.endpoint == "chat":
            kind = "chat.completion"
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
            choice["finish_reason"] = "length"
        else:
            kind = "text_completion"
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        body = {
            "id": self.request_id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage,
        }
        return json.dumps(body, separators=(",", ":")).encode()


def error_body(status: int, message: str) -> bytes:
    """The OpenAI error object."""
    kind = (
        "rate_limit_error" if status == 429 else ("invalid_request_error" if status < 500 else "server_error")
    )
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


# ---------------------------------------------------------------------------------------------------------
# Emissions: one scheduled response each


class Emission:
    """A response scheduled on the timer wheel; `fire` runs at (or just after) its deadline."""

    __slots__ = ("alive", "connection", "completion", "emitter", "sent", "write_times", "outcome")

    def __init__(self, connection: HttpConnection, completion: Completion, emitter: Emitter) -> None:
        self.alive = True
        self.connection = connection
        self.completion = completion
        self.emitter = emitter
        self.sent = 0
        self.write_times: list[int] | None = [] if emitter.records is not None else None
        self.outcome = "pending"

    def fire(self) -> None:
        raise NotImplementedError

    def stall(self) -> None:
        """Write nothing more but leave the socket open, until the client gives up."""
        self.outcome = "stalled"
        self.alive = False

    def finish(self, outcome: str) -> None:
        if self.outcome in ("pending", "stalled"):
            self.outcome = outcome if self.outcome == "pending" else "stalled"
            self.alive = False
            self.emitter.stats.streams_active -= 1
            self.emitter.record(self)
            self.connection.response_finished(outcome in ("done", "error-event"))
            self.emitter.slot_freed()


class StreamEmission(Emission):
    """A streamed completion: token k is written at first_ns + k * itl_ns, on absolute deadlines.

    If a pass runs late, every token already due is written in that pass (each with its own lateness),
    so lateness never accumulates into the schedule.
    """

    __slots__ = (
        "first_ns", "itl_ns", "max_tokens", "last_index", "stop_at", "token_bytes", "last_bytes",
        "stats", "write", "schedule",
    )  # fmt: skip

    def __init__(self, connection: HttpConnection, completion: Completion, emitter: Emitter) -> None:
        super().__init__(connection, completion, emitter)
        self.first_ns = completion.received_ns + completion.ttft_ns
        self.itl_ns = completion.itl_ns
        self.max_tokens = completion.max_tokens
        self.last_index = completion.max_tokens - 1
        self.stats = emitter.stats
        self.write = connection.transport.write
        self.schedule = emitter.wheel.add
        fault = completion.fault
        self.stop_at = min(
            self.max_tokens,
            fault.reset_after if fault.reset_after is not None else self.max_tokens,
            fault.stall_after if fault.stall_after is not None else self.max_tokens,
            1 if fault.error_event is not None else self.max_tokens,
        )
        self.token_bytes = completion.token_frame(None)
        self.last_bytes = completion.token_frame("length") + completion.closing_frames()

    def fire(self) -> None:
        sent = self.sent
        if sent == self.stop_at:
            if self.completion.fault.error_event is not None:
                self.write(self.completion.error_event_frame() + done_and_end(self.completion.line_end))
                self.finish("error-event")
            elif self.completion.fault.reset_after == sent:
                self.connection.reset()
                self.finish("reset")
            else:
                self.stall()
            return
        itl = self.itl_ns
        deadline = self.first_ns + sent * itl
        written_ns = now_ns()
        if 0 < sent < self.last_index and written_ns - deadline < itl:
            count = 1
            self.write(self.token_bytes)
        else:
            due = (written_ns - deadline) // itl + 1 if itl else self.stop_at - sent
            count = min(due, self.stop_at - sent)
            self.write(self._frames(sent, sent + count))
        self.stats.add_write(written_ns, deadline, itl, count)
        if self.write_times is not None:
            self.write_times.extend([written_ns] * count)
        self.sent = sent = sent + count
        if sent == self.max_tokens:
            self.finish("done")
        else:
            self.schedule(self, self.first_ns + sent * itl)

    def _frames(self, start: int, end: int) -> bytes:
        """The bytes of tokens start..end-1, with the opening and closing events where they fall."""
        completion = self.completion
        parts = []
        if start == 0:
            parts.append(completion.opening_frame())
            if completion.fault.malformed:
                parts.append(completion.malformed_frame())
                start = 1
        last = self.max_tokens - 1
        plain = min(end, last) - start
        if plain > 0:
            parts.append(self.token_bytes * plain)
        if end == self.max_tokens:
            parts.append(self.last_bytes if start <= last else completion.closing_frames())
        return b"".join(parts)


class WholeEmission(Emission):
    """A non-streamed completion, written whole when its last token would have been."""

    __slots__ = ("deadline_ns",)

    def __init__(self, connection: HttpConnection, completion: Completion, emitter: Emitter) -> None:
        super().__init__(connection, completion, emitter)
        self.deadline_ns = (
            completion.received_ns + completion.ttft_ns + (completion.max_tokens - 1) * completion.itl_ns
        )

    def fire(self) -> None:
        fault = self.completion.fault
        if fault.reset_after is not None:
            self.connection.reset()
            self.finish("reset")
            return
        if fault.stall_after is not None:
            self.stall()
            return
        body = self.completion.full_body()
        if fault.malformed:
            body = body[: len(body) // 2]
        connection = self.connection
        written_ns = now_ns()
        connection.transport.write(
            response_head(200, "application/json", len(body), connection.keep_alive, connection.extra_headers)
            + body
        )
        self.emitter.stats.add_write(written_ns, self.deadline_ns, 0, 1)
        self.emitter.stats.tokens += self.completion.max_tokens - 1
        self.sent = self.completion.max_tokens
        if self.write_times is not None:
            self.write_times.append(written_ns)
        self.finish("done")


# ---------------------------------------------------------------------------------------------------------
# The connection: minimal HTTP/1.1 with keep-alive


class HttpConnection(asyncio.Protocol):
    """One client connection; requests are answered one at a time, in order."""

    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buffer = bytearray()
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.extra_headers = ""
        self.emission: Emission | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.emitter.stats.connections += 1
        self.emitter.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.emitter.connections.discard(self)
        emission = self.emission
        if emission is not None and emission.outcome in ("pending", "stalled"):
            self.emitter.stats.disconnects += 1
            emission.finish("disconnected")

    def pause_writing(self) -> None:
        # The client is not reading as fast as we write; data now waits in our buffer, so the client will
        # see lateness the emitter's own numbers do not contain. Counted so calibration can tell.
        self.emitter.stats.write_pauses += 1

    def data_received(self, data: bytes) -> None:
        received_ns = now_ns()
        self.buffer += data
        if not self.busy:
            self._next_request(received_ns)

    def _next_request(self, received_ns: int) -> None:
        buffer = self.buffer
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self._reply_error(431, "request head larger than 64 KiB", close=True)
            return
        try:
            lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._reply_error(400, "malformed HTTP request head", close=True)
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._reply_error(411, "send the request body with a content-length, not chunked", close=True)
            return
        if length > MAX_BODY_BYTES:
            self._reply_error(413, f"request body of {length} bytes is over the 64 MiB limit", close=True)
            return
        body_start = head_end + 4
        if len(buffer) < body_start + length:
            if headers.get("expect", "").lower() == "100-continue" and len(buffer) == body_start:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        body = bytes(buffer[body_start : body_start + length])
        del buffer[: body_start + length]

        connection_header = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in connection_header
        else:
            self.keep_alive = "close" not in connection_header
        request_id = headers.get("x-request-id")
        self.extra_headers = f"x-request-id: {request_id}\r\n" if request_id else ""
        self.busy = True
        self.emitter.route(self, method, target.split("?", 1)[0], headers, body, received_ns)

    def reply(
        self, status: int, content_type: str | None, body: bytes, extra: str = "", close: bool = False
    ) -> None:
        """Write a whole response now."""
        if close:
            self.keep_alive = False
        self.transport.write(
            response_head(status, content_type, len(body), self.keep_alive, self.extra_headers + extra) + body
        )
        self.response_finished(True)

    def _reply_error(self, status: int, message: str, close: bool = False) -> None:
        self.busy = True
        self.reply(status, "application/json", error_body(status, message), close=close)

    def response_finished(self, clean: bool) -> None:
        """The response is complete: serve the next pipelined request, or close."""
        self.emission = None
        self.busy = False
        if self.closed:
            return
        if not (clean and self.keep_alive):
            self.transport.close()
            self.closed = True
        elif self.buffer:
            self._next_request(now_ns())

    def reset(self) -> None:
        """Close with a TCP RST, as a crashed server would."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.closed = True
        self.transport.abort()


# ---------------------------------------------------------------------------------------------------------
# The emitter: routes and per-worker state


class Emitter:
    """One worker's server state: config, the timer wheel, stats and the request router."""

    def __init__(
        self, config: EmitterConfig, shared: SharedStats, worker: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.config = config
        self.shared = shared
        self.worker = worker
        self.loop = loop
        self.stats = Stats()
        self.wheel = TimerWheel(loop, int(config.tick_us * 1000), config.timer)
        self.rng = random.Random(None if config.seed is None else config.seed + worker)
        self.connections: set[HttpConnection] = set()
        self.waiting: collections.deque[tuple[HttpConnection, Completion]] = collections.deque()
        """Completions waiting for a slot under --max-streams, oldest first."""
        self.records: list[str] | None = [] if config.record_path else None
        self.record_fd = (
            os.open(config.record_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if config.record_path
            else None
        )
        self.started_ns = now_ns()
        self._id_prefix = f"{os.getpid():x}{worker:x}"
        self._next_id = 0
        self.ttft_ns = int(config.ttft_ms * 1e6)
        self.itl_ns = int(config.itl_ms * 1e6)

    # -- routing ------------------------------------------------------------------------------------------

    def route(
        self, connection: HttpConnection, method: str, path: str, headers: dict, body: bytes, received_ns: int
    ) -> None:
        if path in ("/v1/completions", "/v1/chat/completions"):
            endpoint = "chat" if path == "/v1/chat/completions" else "completions"
            if method != "POST":
                self.stats.requests_other += 1
                connection.reply(
                    405, "application/json", error_body(405, f"{path} takes POST"), extra="allow: POST\r\n"
                )
                return
            self._completion(connection, endpoint, headers, body, received_ns)
            return
        self.stats.requests_other += 1
        if method not in ("GET", "POST"):
            connection.reply(405, "application/json", error_body(405, f"method {method} is not served"))
        elif path == "/health":
            connection.reply(200, None, b"")
        elif path == "/v1/models":
            connection.reply(200, "application/json", self._models())
        elif path == "/metrics":
            connection.reply(200, "text/plain; version=0.0.4; charset=utf-8", self._prometheus())
        elif path == "/emitter/stats":
            connection.reply(200, "application/json", json.dumps(self.stats_report()).encode())
        elif path == "/emitter/reset" and method == "POST":
            self.shared.reset(self.worker, self.stats)
            connection.reply(200, "application/json", b'{"reset":true}')
        else:
            connection.reply(404, "application/json", error_body(404, f"no route for {method} {path}"))

    def _completion(
        self, connection: HttpConnection, endpoint: str, headers: dict, body: bytes, received_ns: int
    ) -> None:
        stats = self.stats
        if endpoint == "chat":
            stats.requests_chat += 1
        else:
            stats.requests_completions += 1
        try:
            completion = self._parse_completion(endpoint, headers, body, received_ns)
        except EmitterError as error:
            connection.reply(400, "application/json", error_body(400, str(error)))
            return
        fault = completion.fault
        if fault.active:
            stats.requests_faulted += 1
        if fault.status is not None:
            extra = "retry-after: 1\r\n" if fault.status in (429, 503) else ""
            message = f"injected fault: status {fault.status}"
            self.record_fault(completion)
            connection.reply(fault.status, "application/json", error_body(fault.status, message), extra=extra)
            return
        if self.config.max_streams is not None and (self.waiting or stats.streams_active >= self.config.max_streams):
            self.waiting.append((connection, completion))
            return
        self._start(connection, completion)

    def slot_freed(self) -> None:
        """A stream ended: start the waiting completions that now fit, oldest first, their clocks starting now."""
        while self.waiting and self.stats.streams_active < (self.config.max_streams or 0):
            connection, completion = self.waiting.popleft()
            if connection.closed:
                continue
            completion.received_ns = now_ns()
            self._start(connection, completion)

    def _start(self, connection: HttpConnection, completion: Completion) -> None:
        stats = self.stats
        if completion.stream:
            emission: Emission = StreamEmission(connection, completion, self)
            connection.transport.write(
                response_head(
                    200,
                    "text/event-stream; charset=utf-8",
                    None,
                    connection.keep_alive,
                    connection.extra_headers,
                )
            )
            first_deadline = emission.first_ns
        else:
            emission = WholeEmission(connection, completion, self)
            first_deadline = emission.deadline_ns
        connection.emission = emission
        stats.streams_active += 1
        self.wheel.add(emission, first_deadline)

    def _parse_completion(self, endpoint: str, headers: dict, body: bytes, received_ns: int) -> Completion:
        try:
            request = json.loads(body)
        except ValueError:
            raise EmitterError("request body is not JSON; send an OpenAI completion request") from None
        if not isinstance(request, dict):
            raise EmitterError("request body must be a JSON object")
        max_tokens = request.get("max_tokens", request.get("max_completion_tokens", 16))
        if max_tokens is None:
            max_tokens = 16
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise EmitterError(f"max_tokens={max_tokens!r}: must be an integer >= 1")
        if endpoint == "chat":
            messages = request.get("messages") or []
            prompt_tokens = count_words([m.get("content", "") for m in messages if isinstance(m, dict)])
        else:
            prompt_tokens = count_words(request.get("prompt", ""))
        stream_options = request.get("stream_options") or {}
        ttft_ns = self._header_ms(headers, "x-emitter-ttft-ms", self.ttft_ns)
        itl_ns = self._header_ms(headers, "x-emitter-itl-ms", self.itl_ns)
        if "x-emitter-fault" in headers:
            fault = parse_fault(headers["x-emitter-fault"], "header x-emitter-fault")
        elif self.config.fail_rate > 0 and self.rng.random() < self.config.fail_rate:
            fault = self.config.fault
        else:
            fault = NO_FAULT
        self._next_id += 1
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        return Completion(
            endpoint=endpoint,
            request_id=f"{prefix}-{self._id_prefix}{self._next_id:010x}",
            model=request.get("model") or self.config.model,
            created=int(time.time()),
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            stream=bool(request.get("stream", False)),
            include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
            received_ns=received_ns,
            ttft_ns=ttft_ns,
            itl_ns=itl_ns,
            fault=fault,
            client_request_id=headers.get("x-request-id"),
            line_end=LINE_ENDS[self.config.line_ends],
        )

    @staticmethod
    def _header_ms(headers: dict, name: str, default_ns: int) -> int:
        if name not in headers:
            return default_ns
        try:
            value = float(headers[name])
            if value < 0 or math.isnan(value):
                raise ValueError(value)
        except ValueError:
            raise EmitterError(f"header {name}: {headers[name]!r} is not a number of ms >= 0") from None
        return int(value * 1e6)

    # -- reports ------------------------------------------------------------------------------------------

    def _models(self) -> bytes:
        model = {
            "id": self.config.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "servelab-emitter",
            "root": self.config.model,
            "parent": None,
        }
        return json.dumps({"object": "list", "data": [model]}).encode()

    def stats_report(self) -> dict[str, object]:
        """Counters and lateness (actual write time minus scheduled time, us) summed over workers."""
        self.shared.publish(self.worker, self.stats)
        report = summarize(self.shared.rows())
        config = asdict(self.config)
        config["fault"] = self.config.fault.describe()
        return {
            "workers": self.config.workers,
            "uptime_s": round((now_ns() - self.started_ns) / 1e9, 3),
            "config": config,
            "timer": type(self.wheel.alarm).__name__,
            "loop": type(self.loop).__module__.split(".")[0],
            **report,
        }

    def _prometheus(self) -> bytes:
        report = self.stats_report()
        requests = report["requests"]
        lateness = report["lateness_us"]
        lines = [
            "# HELP emitter_requests_total Requests received, by endpoint.",
            "# TYPE emitter_requests_total counter",
            *(
                f'emitter_requests_total{{endpoint="{name}"}} {requests[name]}'
                for name in ("completions", "chat", "other")
            ),
            "# HELP emitter_requests_faulted_total Requests answered with an injected fault.",
            "# TYPE emitter_requests_faulted_total counter",
            f"emitter_requests_faulted_total {requests['faulted']}",
            "# HELP emitter_tokens_emitted_total Tokens written (one per chunk when streaming).",
            "# TYPE emitter_tokens_emitted_total counter",
            f"emitter_tokens_emitted_total {report['tokens']}",
            "# HELP emitter_streams_active Responses scheduled and not yet finished.",
            "# TYPE emitter_streams_active gauge",
            f"emitter_streams_active {report['streams_active']}",
            "# HELP emitter_lateness_seconds Actual write time minus scheduled time, per token.",
            "# TYPE emitter_lateness_seconds summary",
        ]
        for key, q in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"), ("p999", "0.999")):
            value = lateness[key]
            lines.append(
                f'emitter_lateness_seconds{{quantile="{q}"}} {value / 1e6 if value is not None else "NaN"}'
            )
        mean = lateness["mean"] or 0.0
        lines.append(f"emitter_lateness_seconds_sum {mean * lateness['count'] / 1e6}")
        lines.append(f"emitter_lateness_seconds_count {lateness['count']}")
        return ("\n".join(lines) + "\n").encode()

    # -- records ------------------------------------------------------------------------------------------

    def record(self, emission: Emission) -> None:
        if self.records is None:
            return
        completion = emission.completion
        self.records.append(
            json.dumps(
                {
                    "id": completion.request_id,
                    "x_request_id": completion.client_request_id,
                    "worker": self.worker,
                    "endpoint": completion.endpoint,
                    "stream": completion.stream,
                    "received_ns": completion.received_ns,
                    "ttft_ns": completion.ttft_ns,
                    "itl_ns": completion.itl_ns,
                    "max_tokens": completion.max_tokens,
                    "tokens_sent": emission.sent,
                    "fault": completion.fault.describe(),
                    "outcome": emission.outcome,
                    "write_ns": emission.write_times,
                }
            )
        )

    def record_fault(self, completion: Completion) -> None:
        if self.records is not None:
            self.records.append(
                json.dumps(
                    {
                        "id": completion.request_id,
                        "x_request_id": completion.client_request_id,
                        "worker": self.worker,
                        "endpoint": completion.endpoint,
                        "stream": completion.stream,
                        "received_ns": completion.received_ns,
                        "fault": completion.fault.describe(),
                        "outcome": f"status {completion.fault.status}",
                        "write_ns": [now_ns()],
                    }
                )
            )

    def flush(self) -> None:
        """Publish stats to the other workers and append finished records to the record file."""
        self.shared.publish(self.worker, self.stats)
        if self.records:
            os.write(self.record_fd, ("\n".join(self.records) + "\n").encode())  # type: ignore[arg-type]
            self.records.clear()


# ---------------------------------------------------------------------------------------------------------
# Processes


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise EmitterError("--loop uvloop: uvloop is not installed; pip install uvloop") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def serve_worker(config: EmitterConfig, sock: socket.socket, shared: SharedStats, worker: int) -> None:
    """Run one worker's event loop on an already listening socket until SIGTERM or SIGINT."""
    loop = new_event_loop(config.loop)
    asyncio.set_event_loop(loop)
    emitter = Emitter(config, shared, worker, loop)
    stop = asyncio.Event()

    async def main() -> None:
        server = await loop.create_server(lambda: HttpConnection(emitter), sock=sock, backlog=4096)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def flush_periodically() -> None:
            emitter.flush()
            loop.call_later(FLUSH_INTERVAL_S, flush_periodically)

        flush_periodically()
        await stop.wait()
        server.close()
        for connection in list(emitter.connections):
            connection.transport.abort()
        emitter.flush()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def raise_open_file_limit() -> None:
    """Thousands of streams need thousands of sockets; lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stop_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the parent dies, so a killed emitter leaves no workers."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run(config: EmitterConfig) -> int:
    """Bind, announce 'listening on http://HOST:PORT' on stdout, and serve until told to stop."""
    raise_open_file_limit()
    multi = config.workers > 1
    sockets = [listening_socket(config.host, config.port, multi)]
    port = sockets[0].getsockname()[1]
    sockets += [listening_socket(config.host, port, True) for _ in range(config.workers - 1)]
    shared = SharedStats(config.workers)
    host = f"[{config.host}]" if ":" in config.host else config.host
    announce = f"listening on http://{host}:{port}"

    if not multi:
        print(announce, flush=True)
        serve_worker(config, sockets[0], shared, 0)
        return 0

    children = []
    for worker, sock in enumerate(sockets):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                stop_with_parent()
                for other in sockets:
                    if other is not sock:
                        other.close()
                serve_worker(config, sock, shared, worker)
            except BaseException:
                log.exception("worker %d failed", worker)
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        children.append(pid)
    for sock in sockets:
        sock.close()
    print(announce, flush=True)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    remaining = set(children)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM, -signal.SIGINT):
            code = 1
        if remaining:
            forward(signal.SIGTERM, None)
    return code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s emitter %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        return run(parse_args(argv))
    except EmitterError as error:
        print(f"emitter: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
