"""Calibration: how fast servelab's own client can go, and how exactly it measures, on this host.

The reference emitter (`tools/emitter`) streams with a fixed TTFT and ITL and records when it wrote every
token (`--record`), so every level has a known truth: true TTFT = first write - request received, true
ITL = gaps between writes. Both include the emitter's own lateness (what `/emitter/stats` summarises), so
subtracting it is exact, token by token. servelab's client (`load.run_point` over `clients`, the code a
sweep runs) drives the emitter closed loop at rising concurrency, then open loop at rates up to what it
sustained, and each level's reported TTFT and ITL are set against the truth.

The ceiling is the most chunks/s (and req/s) at a level the client sustains: reported ITL mean and median
within 1% of the truth and mean TTFT within 2% (or 0.2 ms), see `is_sustained`. docs/calibration.md has
the procedure and the figures measured on the project's hosts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from servelab import aio
from servelab.analyse import metrics
from servelab.errors import ServelabError
from servelab.measure.clients import Target
from servelab.measure.load import PointOutcome, ensure_file_descriptors, make_client, run_point
from servelab.measure.prompts import Prompt
from servelab.params import ConcurrencyLoad, RateLoad, Sweep
from servelab.records import RequestRecord
from servelab.serve.deploy import stop_child

log = logging.getLogger(__name__)

EMITTER = Path(__file__).resolve().parents[3] / "tools" / "emitter" / "emitter.py"
CACHE_FILE = Path.home() / ".cache" / "servelab" / "calibration.json"
CALIBRATION_VERSION = 1
ITL_TOLERANCE = 0.01
"""A level is sustained when the reported ITL mean and median are within 1% of the true ones ..."""
TTFT_TOLERANCE = 0.02
TTFT_FLOOR_MS = 0.2
"""... its mean TTFT within 2% or 0.2 ms of the true one (whichever is larger) ..."""
RATE_TOLERANCE = 0.01
"""... and, in rate mode, its achieved rate within 1% of the intended one."""
WARN_FRACTION = 0.70
"""`ceiling_warnings` speaks up above 70% of the ceiling."""
EMITTER_LATE_US = 1000.0
"""Above this p99 lateness (or with several tokens per write) the emitter, not the client, set the pace."""
FULL_CONCURRENCY = (8, 16, 32, 64, 128, 256, 384, 512, 768, 1024)
QUICK_CONCURRENCY = (16, 64, 256, 512)
FULL_RATE_FRACTIONS = (0.25, 0.5, 0.7, 0.85, 1.0)
QUICK_RATE_FRACTIONS = (0.5, 1.0)
RESERVED_FLAGS = ("--port", "--record", "--ttft-ms", "--itl-ms", "--workers", "--host")
PROMPTS = [Prompt(f"calibrate the client, request {i}", "en", 6) for i in range(64)]


class CalibrationError(ServelabError):
    """The reference emitter could not be started or answered something unexpected."""


# ------------------------------------------------------------------------------------------ results
@dataclass(slots=True)
class Deviation:
    """One latency metric at one level, ms: what servelab reported, the truth, and reported - truth."""

    reported: dict[str, float | None]
    true: dict[str, float | None]
    error: dict[str, float | None]
    """Keys count, mean, p50, p99 (error: mean, p50, p99); None where there were no values."""

    @classmethod
    def of(cls, reported: np.ndarray, true: np.ndarray) -> Deviation:
        def stats(values: np.ndarray) -> dict[str, float | None]:
            if not values.size:
                return {"count": 0, "mean": None, "p50": None, "p99": None}
            return {
                "count": int(values.size),
                "mean": float(values.mean()),
                "p50": float(np.percentile(values, 50)),
                "p99": float(np.percentile(values, 99)),
            }

        got, truth = stats(reported), stats(true)
        error = {
            k: None if got[k] is None or truth[k] is None else got[k] - truth[k]  # type: ignore[operator]
            for k in ("mean", "p50", "p99")
        }
        return cls(got, truth, error)

    def relative(self, stat: str) -> float:
        """error / truth of one statistic (0.01 = 1%); infinite when either is missing."""
        error, truth = self.error[stat], self.true[stat]
        return error / truth if error is not None and truth else math.inf


def is_sustained(
    ttft_ms: Deviation, itl_ms: Deviation, errors: int, requests: int, rate_error_pct: float | None = None
) -> bool:
    """The criterion of a sustained level: ITL mean and median within 1% of the truth, TTFT mean within 2% or
    0.2 ms, no failed request, and (rate mode) the achieved rate within 1% of the intended one.

    The mean ITL alone cannot tell a client that keeps up from one that reads every stream late by the same
    amount: a request's mean gap is (last chunk - first chunk) / (n - 1), and a constant delay cancels. The
    median catches reads that bunch up (gaps near 0 and near 2 ITL), and TTFT catches the constant delay.
    """
    itl_ok = all(abs(itl_ms.relative(stat)) <= ITL_TOLERANCE for stat in ("mean", "p50"))
    error, truth = ttft_ms.error["mean"], ttft_ms.true["mean"]
    ttft_ok = (
        error is not None and truth is not None and abs(error) <= max(TTFT_TOLERANCE * truth, TTFT_FLOOR_MS)
    )
    rate_ok = rate_error_pct is None or abs(rate_error_pct) <= RATE_TOLERANCE * 100
    return bool(itl_ok and ttft_ok and rate_ok and errors == 0 and requests > 0)


@dataclass(slots=True)
class Level:
    """One calibration level: a closed-loop concurrency or an open-loop constant rate."""

    mode: str
    """'concurrency' or 'rate'."""
    value: float
    requests: int
    errors: int
    window_s: float
    """The steady window throughput is counted over: from the end of the ramp-up (closed loop) or one request
    lifetime after the first arrival (open loop) to the point's deadline, when the last request is sent."""
    req_s: float
    """chunks_s / output_tokens: the emitter sends every request exactly output_tokens chunks."""
    chunks_s: float
    """Chunks the client received within the window, per second."""
    ttft_ms: Deviation
    itl_ms: Deviation
    schedule_lag_p99_ms: float | None
    client_cpu_pct: float
    emitter_lateness_us: dict[str, float | None]
    emitter_tokens_per_write: float
    target_req_s: float | None = None
    """Rate mode: the intended rate, (n - 1) / (last intended send - first intended send)."""
    sent_req_s: float | None = None
    """Rate mode: the achieved rate, (n - 1) / (last actual send - first actual send)."""
    rate_error_pct: float | None = None
    sustained: bool = False
    emitter_bound: bool = False
    attempts: int = 1
    """Tries this level took: a level that fails is run again, up to `calibrate(attempts=)` times."""

    def judge(self) -> None:
        """Set `sustained` (see `is_sustained`) and `emitter_bound`."""
        self.sustained = is_sustained(
            self.ttft_ms, self.itl_ms, self.errors, self.requests, self.rate_error_pct
        )
        p99 = self.emitter_lateness_us.get("p99")
        self.emitter_bound = (
            p99 is not None and p99 > EMITTER_LATE_US
        ) or self.emitter_tokens_per_write > 1.01


@dataclass(slots=True)
class Calibration:
    """A calibration of the client on this host; `as_dict()` is what manifest.json stores."""

    created_utc: str
    host: dict[str, Any]
    packages: dict[str, str]
    cores: int
    client_cpus: list[int]
    emitter_cpus: list[int]
    emitter_workers: int
    event_loop: str
    ttft_ms: float
    itl_ms: float
    output_tokens: int
    quick: bool
    levels: list[Level] = field(default_factory=list)
    max_req_s: float = 0.0
    max_chunks_s: float = 0.0
    max_tok_s: float = 0.0
    """The emitter sends one token per chunk, so this equals max_chunks_s."""
    ceiling_concurrency: int | None = None
    limited_by: str = "client"
    """'client' (the next level broke the criterion), 'emitter' (the emitter fell behind first) or 'levels'
    (the highest level tried was still sustained: the ceiling is at least this)."""
    rate_max_error_pct: float | None = None
    """The largest |achieved / target - 1| of the rate levels at or below the ceiling, %."""
    version: int = CALIBRATION_VERSION

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        values = dict(data)
        levels = []
        for level in values.pop("levels", []):
            level = dict(level)
            level["ttft_ms"] = Deviation(**level["ttft_ms"])
            level["itl_ms"] = Deviation(**level["itl_ms"])
            levels.append(Level(**level))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names}, levels=levels)


# ------------------------------------------------------------------------------------------ the emitter
@dataclass(slots=True)
class EmitterProcess:
    """A running reference emitter: its URL, and the file where it records each request's write times."""

    base_url: str
    record_path: Path
    process: subprocess.Popen
    offset: int = 0

    def reset(self, http: httpx.Client) -> None:
        http.post(self.base_url + "/emitter/reset").raise_for_status()

    def stats(self, http: httpx.Client) -> dict[str, Any]:
        response = http.get(self.base_url + "/emitter/stats")
        response.raise_for_status()
        return response.json()

    def records(self) -> list[dict[str, Any]]:
        """The request records the emitter appended since the last call."""
        with open(self.record_path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


@contextmanager
def running_emitter(
    ttft_ms: float,
    itl_ms: float,
    *,
    workers: int = 1,
    cpus: Sequence[int] | None = None,
    extra: Sequence[str] = (),
    emitter_path: Path = EMITTER,
) -> Iterator[EmitterProcess]:
    """The reference emitter as a subprocess on a free port, pinned to `cpus`, recording every request."""
    if not emitter_path.exists():
        raise CalibrationError(
            f"the reference emitter is not at {emitter_path}; calibrate from a servelab checkout "
            "(tools/emitter/emitter.py) or pass emitter_path="
        )
    for flag in extra:
        if flag.split("=")[0] in RESERVED_FLAGS:
            raise ValueError(
                f"emitter_args may not set {flag}: calibrate sets it (use ttft_ms=, itl_ms=, cores=)"
            )
    with tempfile.TemporaryDirectory(prefix="servelab-calibrate-") as folder:
        record_path = Path(folder) / "emitter.jsonl"
        command = [
            sys.executable, str(emitter_path), "--port", "0", "--ttft-ms", f"{ttft_ms:g}", "--itl-ms",
            f"{itl_ms:g}", "--workers", str(workers), "--record", str(record_path), *extra,
        ]  # fmt: skip
        log_path = Path(folder) / "emitter.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus))
                if cpus and hasattr(os, "sched_setaffinity")
                else None,
            )
        try:
            line = process.stdout.readline().strip()  # type: ignore[union-attr]
            match = re.fullmatch(r"listening on (http://\S+)", line)
            if not match:
                process.wait(timeout=5)
                raise CalibrationError(
                    f"the reference emitter did not start (first line {line!r}); its log: {log_path.read_text()[-2000:]}"
                )
            record_path.touch()
            yield EmitterProcess(match.group(1), record_path, process)
        finally:
            stop_child(process)
            if process.stdout is not None:
                process.stdout.close()


# ------------------------------------------------------------------------------------------ one level
def request_lifetime_s(ttft_ms: float, itl_ms: float, tokens: int) -> float:
    """How long one emitter request streams: TTFT, then tokens - 1 gaps of ITL, in seconds."""
    return (ttft_ms + (tokens - 1) * itl_ms) / 1000


def true_latencies(
    emitter_records: list[dict[str, Any]], start_ns: int, end_ns: int
) -> tuple[np.ndarray, np.ndarray]:
    """True TTFTs and pooled ITLs (ms) of the emitter's finished requests received within [start, end]."""
    ttfts, gaps = [], []
    for row in emitter_records:
        if row.get("outcome") != "done" or not start_ns <= row["received_ns"] <= end_ns:
            continue
        writes = np.asarray(row["write_ns"], dtype=np.int64)
        ttfts.append((writes[0] - row["received_ns"]) / 1e6)
        if writes.size > 1:
            gaps.append(np.diff(writes) / 1e6)
    return np.asarray(ttfts), (np.concatenate(gaps) if gaps else np.asarray([]))


def _level_result(
    mode: str,
    value: float,
    output_tokens: int,
    records: list[RequestRecord],
    outcome: PointOutcome,
    warm_s: float,
    duration_s: float,
    cpu_s: float,
    wall_s: float,
    emitter_records: list[dict[str, Any]],
    emitter_stats: dict[str, Any],
) -> Level:
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    window_start = outcome.start_ns + round(warm_s * 1e9)
    window_end = outcome.start_ns + round(duration_s * 1e9)
    window_s = max((window_end - window_start) / 1e9, 1e-9)
    chunks = np.concatenate([np.asarray(r.chunk_ns, dtype=np.int64) for r in ok]) if ok else np.asarray([])
    chunks_s = int(((chunks >= window_start) & (chunks < window_end)).sum()) / window_s
    reported_ttft = np.asarray([metrics.ttft_ms(r) for r in ok], dtype=float)
    gaps = [np.diff(np.asarray(r.chunk_ns, dtype=np.int64)) for r in ok if len(r.chunk_ns) > 1]
    reported_itl = np.concatenate(gaps) / 1e6 if gaps else np.asarray([])
    sent = [r for r in measured if r.actual_send_ns]
    first = min((r.actual_send_ns for r in sent), default=0)
    last = max((r.end_ns for r in measured), default=0)
    true_ttft, true_itl = true_latencies(emitter_records, first, last)
    lateness = emitter_stats.get("lateness_us", {})
    writes = emitter_stats.get("writes") or 0
    level = Level(
        mode=mode,
        value=value,
        requests=len(measured),
        errors=len(measured) - len(ok),
        window_s=window_s,
        req_s=chunks_s / output_tokens,  # the emitter sends every request exactly output_tokens chunks
        chunks_s=chunks_s,
        ttft_ms=Deviation.of(reported_ttft, true_ttft),
        itl_ms=Deviation.of(reported_itl, true_itl),
        schedule_lag_p99_ms=outcome.lag_p99_ms,
        client_cpu_pct=100.0 * cpu_s / wall_s if wall_s > 0 else math.nan,
        emitter_lateness_us={k: lateness.get(k) for k in ("mean", "p50", "p99", "max")},
        emitter_tokens_per_write=(emitter_stats.get("tokens") or 0) / writes if writes else 1.0,
    )
    if mode == "rate" and len(sent) > 1:
        intended = sorted(r.intended_send_ns for r in sent)
        actual = sorted(r.actual_send_ns for r in sent)
        level.target_req_s = (len(sent) - 1) / ((intended[-1] - intended[0]) / 1e9)
        level.sent_req_s = (len(sent) - 1) / ((actual[-1] - actual[0]) / 1e9)
        level.rate_error_pct = 100.0 * (level.sent_req_s / level.target_req_s - 1.0)
    level.judge()
    return level


async def _run_level(
    emitter: EmitterProcess,
    http: httpx.Client,
    target: Target,
    mode: str,
    value: float,
    duration_s: float,
    output_tokens: int,
    lifetime_s: float,
) -> Level:
    if mode == "concurrency":
        concurrency = int(value)
        ramp_up_s = min(0.2, duration_s / 8)
        load: ConcurrencyLoad | RateLoad = ConcurrencyLoad(values=(concurrency,), ramp_up_s=ramp_up_s)
        warm_s, warmups, connections = ramp_up_s, concurrency, concurrency
    else:
        load = RateLoad(kind="constant", values=(value,))
        warmups = 16
        warm_s = lifetime_s
        connections = math.ceil(value * lifetime_s * 2) + 2 * warmups
    sweep = Sweep(
        load=(load,),
        output_tokens=output_tokens,
        ignore_eos=True,
        requests_per_point=None,
        duration_s=duration_s,
        warmup_requests=warmups,
        request_timeout_s=max(30.0, 20 * lifetime_s),
    )
    records: list[RequestRecord] = []
    emitter.reset(http)
    async with make_client(connections) as client:
        cpu, wall = time.process_time(), time.perf_counter()
        outcome = await run_point(
            client, target, PROMPTS, load, value, sweep,
            f"calibrate-{mode}-{value:g}", records.append,
        )  # fmt: skip
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await asyncio.sleep(0.25)  # the emitter publishes stats and appends records every 100 ms
    return _level_result(
        mode,
        value,
        output_tokens,
        records,
        outcome,
        warm_s,
        duration_s,
        cpu,
        wall,
        emitter.records(),
        emitter.stats(http),
    )


# ------------------------------------------------------------------------------------------ the procedure
def _split_cpus(cores: int) -> tuple[list[int], list[int]]:
    """The client's CPUs (the first `cores` this process may use) and the emitter's (the rest, or all)."""
    allowed = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    client = allowed[: min(cores, len(allowed))]
    rest = allowed[len(client) :]
    return client, rest or allowed


def calibrate(
    cores: int = 1,
    quick: bool = False,
    emitter_args: Sequence[str] = (),
    *,
    ttft_ms: float = 20.0,
    itl_ms: float = 5.0,
    output_tokens: int = 64,
    concurrency: Sequence[int] | None = None,
    rate_fractions: Sequence[float] | None = None,
    level_s: float | None = None,
    attempts: int = 2,
    cache_path: Path | None = CACHE_FILE,
    emitter_path: Path = EMITTER,
    progress: bool = True,
) -> Calibration:
    """Measure the client's ceiling (req/s, chunks/s) and timing error against the reference emitter.

    The client (this process's event loop) is pinned to `cores` CPUs and the emitter to the others, with
    one worker per CPU up to 4. Closed-loop levels (`concurrency`) rise until two in a row fail the criterion
    (`is_sustained`); then constant-rate levels run at `rate_fractions` of the ceiling's req/s. Each level
    lasts `level_s` seconds (3 s, or 1.2 s with `quick`, which finishes in about 15 s); one that fails is
    tried again, up to `attempts` tries, since other processes on the host can stall either side for
    milliseconds. The result is also saved to `cache_path` (None: not saved), from where
    `record_calibration` puts it into a run's manifest.
    """
    from servelab.manifest import host_info, package_versions
    from servelab.serve.engines import engine_packages

    client_cpus, emitter_cpus = _split_cpus(cores)
    workers = max(1, min(4, len(emitter_cpus)))
    levels_to_try = tuple(concurrency or (QUICK_CONCURRENCY if quick else FULL_CONCURRENCY))
    fractions = tuple(
        rate_fractions
        if rate_fractions is not None
        else (QUICK_RATE_FRACTIONS if quick else FULL_RATE_FRACTIONS)
    )
    duration_s = level_s or (1.2 if quick else 3.0)
    lifetime_s = request_lifetime_s(ttft_ms, itl_ms, output_tokens)
    loop_name = aio.loop_name()
    ensure_file_descriptors(2 * max(levels_to_try))
    result = Calibration(
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        host=host_info(),
        packages=package_versions(engine_packages()),
        cores=len(client_cpus),
        client_cpus=client_cpus,
        emitter_cpus=emitter_cpus,
        emitter_workers=workers,
        event_loop=loop_name,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        output_tokens=output_tokens,
        quick=quick,
    )
    with (
        running_emitter(
            ttft_ms, itl_ms, workers=workers, cpus=emitter_cpus, extra=emitter_args, emitter_path=emitter_path
        ) as emitter,
        httpx.Client(timeout=10, trust_env=False) as http,
    ):
        target = Target("emitter", "emitter", "emitter", "servelab-emitter", emitter.base_url, "openai")

        async def procedure() -> None:
            pinned = hasattr(os, "sched_setaffinity")  # Linux; elsewhere the client runs unpinned
            previous = os.sched_getaffinity(0) if pinned else set()
            if pinned:
                os.sched_setaffinity(0, client_cpus)  # this thread: the one running the event loop
            bar = tqdm(
                total=len(levels_to_try) + len(fractions),
                desc="calibration",
                unit="level",
                disable=not progress,
            )
            try:

                async def measure(mode: str, value: float) -> Level:
                    bar.set_postfix_str(
                        f"concurrency {value:g}" if mode == "concurrency" else f"rate {value:g}/s"
                    )
                    for attempt in range(1, attempts + 1):
                        level = await _run_level(
                            emitter, http, target, mode, value, duration_s, output_tokens, lifetime_s
                        )
                        level.attempts = attempt
                        log.debug(
                            "%s %g try %d: %.0f chunks/s, sustained %s",
                            mode,
                            value,
                            attempt,
                            level.chunks_s,
                            level.sustained,
                        )
                        if level.sustained:
                            break
                    bar.update()
                    return level

                misses = 0
                for value in levels_to_try:
                    level = await measure("concurrency", value)
                    result.levels.append(level)
                    misses = 0 if level.sustained else misses + 1
                    if misses == 2:
                        break
                _set_ceiling(result)
                for fraction in fractions if result.max_req_s else ():
                    result.levels.append(await measure("rate", round(fraction * result.max_req_s, 1)))
            finally:
                bar.close()
                if pinned:
                    os.sched_setaffinity(0, previous)

        aio.run_sync(procedure())
    rates = [abs(lv.rate_error_pct) for lv in result.levels if lv.rate_error_pct is not None]
    result.rate_max_error_pct = max(rates) if rates else None
    if cache_path is not None:
        save_calibration(result, cache_path)
    return result


def _set_ceiling(result: Calibration) -> None:
    closed = [lv for lv in result.levels if lv.mode == "concurrency"]
    sustained = [lv for lv in closed if lv.sustained]
    if not sustained:
        return
    best = max(sustained, key=lambda lv: lv.chunks_s)
    result.max_chunks_s = best.chunks_s
    result.max_tok_s = best.chunks_s
    result.max_req_s = max(lv.req_s for lv in sustained)
    result.ceiling_concurrency = int(best.value)
    broken = [lv for lv in closed if lv.value > best.value and not lv.sustained]
    if not broken:
        result.limited_by = "levels"
    elif broken[0].emitter_bound:
        result.limited_by = "emitter"
    else:
        result.limited_by = "client"


# ------------------------------------------------------------------------------------------ presentation
def format_calibration(calibration: Calibration) -> str:
    """A table of every level (errors are reported - true, ms) and the ceiling."""
    rows = []
    for lv in calibration.levels:
        rows.append(
            {
                "load": f"{lv.value:g} streams" if lv.mode == "concurrency" else f"{lv.value:g} req/s",
                "req/s": f"{lv.req_s:,.0f}",
                "chunks/s": f"{lv.chunks_s:,.0f}",
                "TTFT err mean/p99": _errors(lv.ttft_ms, ("mean", "p99"), 2),
                "ITL err mean/p50/p99": _errors(lv.itl_ms, ("mean", "p50", "p99"), 3),
                "rate err %": "" if lv.rate_error_pct is None else f"{lv.rate_error_pct:+.2f}",
                "lag p99 ms": "" if lv.schedule_lag_p99_ms is None else f"{lv.schedule_lag_p99_ms:.2f}",
                "client CPU": f"{lv.client_cpu_pct:.0f}%",
                "emitter late p99 us": _number(lv.emitter_lateness_us.get("p99")),
                "verdict": ("ok" if lv.sustained else "over")
                + (f", {lv.attempts} tries" if lv.attempts > 1 else "")
                + (", emitter late" if lv.emitter_bound else ""),
            }
        )
    table = pd.DataFrame(rows).to_string(index=False) if rows else "(no levels ran)"
    c = calibration
    head = (
        f"servelab client calibration, {c.created_utc}, {c.host.get('hostname')}: client on CPU {_cpus(c.client_cpus)}, "
        f"emitter ({c.emitter_workers} worker(s)) on CPU {_cpus(c.emitter_cpus)}, {c.event_loop}; true TTFT {c.ttft_ms:g} ms, "
        f"ITL {c.itl_ms:g} ms, {c.output_tokens} tokens per request{', quick' if c.quick else ''}"
    )
    if c.max_chunks_s:
        bound = {
            "client": "",
            "emitter": " (the emitter fell behind next)",
            "levels": " (at least: every level held)",
        }
        ceiling = (
            f"ceiling on {c.cores} core(s): {c.max_req_s:,.0f} req/s, {c.max_chunks_s:,.0f} chunks/s at "
            f"{c.ceiling_concurrency} streams{bound[c.limited_by]}; ITL mean and median within 1%, TTFT mean within 2% or 0.2 ms of the truth"
        )
    else:
        ceiling = "ceiling: no level met the criterion (ITL mean and median within 1%, TTFT mean within 2% or 0.2 ms)"
    rate = (
        ""
        if c.rate_max_error_pct is None
        else f"\nrate mode: largest |achieved/target - 1| = {c.rate_max_error_pct:.2f}%"
    )
    return f"{head}\n{table}\n{ceiling}{rate}"


def _errors(deviation: Deviation, stats: tuple[str, ...], digits: int) -> str:
    return " / ".join(
        "-" if deviation.error[s] is None else f"{deviation.error[s]:+.{digits}f}" for s in stats
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


# ------------------------------------------------------------------------------------------ cache, manifest, warnings
def save_calibration(calibration: Calibration, path: Path | None = None) -> Path:
    """Write the calibration as JSON (atomically; default CACHE_FILE), for later runs on this host to record."""
    path = path or CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(calibration.as_dict(), indent=2, allow_nan=False), encoding="utf-8")
    os.replace(temporary, path)
    return path


def cached_calibration(path: Path | None = None) -> Calibration | None:
    """The last calibration saved on this host (default CACHE_FILE), or None: none saved, unreadable, made by
    an older servelab, or another host's."""
    from servelab.manifest import host_info

    try:
        data = json.loads((path or CACHE_FILE).read_text(encoding="utf-8"))
        calibration = Calibration.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if (
        calibration.version != CALIBRATION_VERSION
        or calibration.host.get("hostname") != host_info()["hostname"]
    ):
        return None
    return calibration


def record_calibration(
    run_dir: Path, calibration: Calibration | None = None, *, cache_path: Path | None = None
) -> Calibration | None:
    """Store `calibration` (default: this host's cached one, see `cached_calibration`) in the run's
    manifest.json under `calibration`; returns what was stored, None when there was nothing to store."""
    from servelab.manifest import update_manifest

    calibration = calibration or cached_calibration(cache_path)
    if calibration is not None:
        update_manifest(Path(run_dir), calibration=calibration.as_dict())
    return calibration


def ceiling_warnings(
    calibration: Calibration | dict[str, Any] | None, summary: pd.DataFrame, fraction: float = WARN_FRACTION
) -> list[str]:
    """One message per load point whose chunks/s or req/s exceeds `fraction` of the client's ceiling.

    chunks/s of a point = (ITL count + successful requests) / duration_s, from the tidy summary; points
    without ITLs fall back to output_tok_s (a chunk holds at least one token, so this over-counts).
    """
    if calibration is None or summary is None or summary.empty:
        return []
    data = calibration.as_dict() if isinstance(calibration, Calibration) else calibration
    max_req_s, max_chunks_s = (
        data.get("max_req_s") or 0.0,
        data.get("max_chunks_s") or data.get("max_tok_s") or 0.0,
    )
    if not (max_req_s or max_chunks_s):
        return []
    cores = data.get("cores", 1)
    messages = []
    for point_id, rows in summary.groupby("point_id", sort=False):
        value = {(m, s): v for m, s, v in zip(rows["metric"], rows["stat"], rows["value"], strict=True)}
        duration = value.get(("duration_s", "value")) or 0.0
        req_s = value.get(("req_s", "value")) or 0.0
        ok = (value.get(("requests", "value")) or 0.0) - (value.get(("errors", "value")) or 0.0)
        gaps = value.get(("itl_ms", "count"))
        if duration > 0 and gaps:
            chunks_s = (gaps + ok) / duration
        else:
            chunks_s = value.get(("output_tok_s", "value")) or 0.0
        for got, ceiling, unit in (
            (chunks_s, max_chunks_s, "chunks/s"),
            (req_s, max_req_s, "req/s"),
        ):
            if ceiling and got > fraction * ceiling:
                messages.append(
                    f"point {point_id}: {got:,.0f} {unit} is {got / ceiling:.0%} of the client's calibrated ceiling "
                    f"({ceiling:,.0f} {unit} on {cores} core(s)); its latencies may include the client's own delay "
                    "(see docs/calibration.md)"
                )
    return messages
