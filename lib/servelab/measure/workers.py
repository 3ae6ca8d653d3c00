"""One load point driven by several client processes, each pinned to its own core, whose records merge into one
`requests.jsonl` on one clock.

One client core holds about 12k to 49k streamed chunks/s within servelab's accuracy criterion
(docs/calibration.md); a host serving eight models streams more. So a point can be split over N processes:

- closed loop: process k runs its share of the streams (concurrency c split as evenly as it goes) and of the
  request count;
- open loop: the point's ONE arrival schedule is computed here, once, and dealt round-robin (process k sends
  arrivals k, k + N, k + 2N, ...), so the rate and its randomness are exactly those of one process;
- every process warms up on its own, then says so, and all of them start from one anchor the parent hands out;
- request indices are global: process k's i-th measured request is index W + k + N x i (W: warm-ups, dealt the
  same way), so the merged point reads as one point.

Every stamp is `servelab.clock.now_ns`: CLOCK_MONOTONIC, one clock for every process of a Linux host, so stamps
taken in different processes compare directly. Each process appends its records to its own part file as they
complete (a killed point is re-run by --resume, and its part files are dropped); when the point ends, the parent
merges them into `requests.jsonl` in completion order (end_ns).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servelab.clock import now_ns
from servelab.errors import ClientCapacityError
from servelab.measure.clients import Target, Transport, make_client
from servelab.measure.http11 import StreamClient
from servelab.measure.load import (
    START_LEAD_NS,
    PointOutcome,
    arrival_offsets_ns,
    ensure_file_descriptors,
    point_rng,
    run_point,
    schedule_lag_limit_ms,
)
from servelab.measure.prompts import Prompt
from servelab.params import ConcurrencyLoad, LoadParams, Sweep
from servelab.records import MANIFEST_FILE, JsonlWriter, RequestRecord, read_jsonl

log = logging.getLogger(__name__)

HEADROOM = 0.70
"""'auto' loads each process to at most 70 % of the calibrated per-core ceiling: the fraction at which the
report warns (servelab.checks.calibrate.WARN_FRACTION)."""
ANCHOR_LEAD_NS = 20_000_000
"""The shared anchor is this far ahead of the moment every process is ready: long enough for the parent's
message to reach each of them, so no first arrival is born late."""
PARTS_DIR = "client-parts"
ClientProcesses = int | Literal["auto"]


# ------------------------------------------------------------------------------------------ how many
@dataclass(frozen=True)
class ClientCeiling:
    """What one client core sustained in `servelab calibrate`: chunks/s, req/s and closed-loop streams."""

    max_chunks_s: float
    max_req_s: float
    ceiling_concurrency: int | None

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any] | None) -> ClientCeiling | None:
        """From a calibration as manifest.json stores it; None when there is none or it found no ceiling."""
        if not calibration:
            return None
        chunks = float(calibration.get("max_chunks_s") or calibration.get("max_tok_s") or 0.0)
        requests = float(calibration.get("max_req_s") or 0.0)
        if chunks <= 0 and requests <= 0:
            return None
        streams = calibration.get("ceiling_concurrency")
        return cls(chunks, requests, int(streams) if streams else None)


def ceiling_of_run(run_dir: Path) -> ClientCeiling | None:
    """The client ceiling recorded in the run's manifest (this host's last `servelab calibrate`), or None."""
    try:
        manifest = json.loads((Path(run_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ClientCeiling.from_calibration(manifest.get("calibration"))


def usable_cpus() -> list[int]:
    """The cores this process may run on, ascending."""
    return sorted(os.sched_getaffinity(0))


def processes_for(
    setting: ClientProcesses,
    load: LoadParams,
    load_value: float,
    output_tokens: int,
    ceiling: ClientCeiling | None,
    cores: int,
) -> int:
    """How many client processes drive one point: `setting` itself, or for 'auto' the fewest that keep each
    process within HEADROOM of the calibrated per-core ceiling, at most one per core (1 without a calibration).

    'auto', closed loop: c / (HEADROOM x the calibration's ceiling streams). Open loop: the larger of
    rate x output_tokens / (HEADROOM x max chunks/s) (a chunk carries at least one token, so this is an upper
    bound) and rate / (HEADROOM x max req/s). Never more processes than streams (closed loop).
    """
    if setting == "auto":
        if ceiling is None:
            log.info("client_processes: auto without a calibration (`servelab calibrate`); using one process")
            return 1
        if isinstance(load, ConcurrencyLoad):
            per_process = HEADROOM * (ceiling.ceiling_concurrency or 1)
            wanted = math.ceil(load_value / per_process)
        else:
            by_chunks = load_value * output_tokens / (HEADROOM * ceiling.max_chunks_s) if ceiling.max_chunks_s else 1
            by_requests = load_value / (HEADROOM * ceiling.max_req_s) if ceiling.max_req_s else 1
            wanted = math.ceil(max(by_chunks, by_requests))
        count = max(1, min(wanted, cores))
    else:
        count = int(setting)
    if isinstance(load, ConcurrencyLoad):
        count = min(count, max(1, int(load_value)))
    return max(1, count)


# ------------------------------------------------------------------------------------------ the shares
def dealt(total: int, parts: int) -> list[int]:
    """How many of `total` items each of `parts` takes when they are dealt round-robin (first parts get more)."""
    return [len(range(k, total, parts)) for k in range(parts)]


def deal_schedule(offsets: Sequence[int], parts: int) -> list[list[int]]:
    """The one open-loop schedule dealt round-robin: part k sends arrivals k, k + parts, k + 2 x parts, ..."""
    return [list(offsets[k::parts]) for k in range(parts)]


@dataclass(frozen=True)
class Share:
    """Process `worker` of `workers`: its core, warm-ups, measured requests and (open loop) its arrivals."""

    worker: int
    workers: int
    cpu: int | None
    warmup: int
    """Warm-up requests this process sends; the point's warm-ups are dealt round-robin."""
    total_warmup: int
    requests: int | None
    """Measured requests this process sends: its share of the count (closed loop) or of the schedule (open
    loop); None for a closed loop that runs by duration alone."""
    streams: int
    """Closed loop: the concurrency this process runs. Open loop: its cap on requests in flight (0: none)."""
    offsets: list[int] | None = None

    def global_index(self, local: int) -> int:
        """The point-wide request index of this process's `local`-th request (warm-ups first, then measured)."""
        if local < self.warmup:
            return self.worker + self.workers * local
        return self.total_warmup + self.worker + self.workers * (local - self.warmup)


def plan_shares(
    processes: int,
    load: LoadParams,
    load_value: float,
    sweep: Sweep,
    point_id: str,
    cpus: Sequence[int],
    first_cpu: int = 0,
) -> list[Share]:
    """Split one point over `processes`; process k is pinned to cpus[(first_cpu + k) % len(cpus)]."""
    warmups = dealt(sweep.warmup_requests, processes)
    if isinstance(load, ConcurrencyLoad):
        streams = dealt(int(load_value), processes)
        counts: list[int | None] = (
            list(dealt(sweep.requests_per_point, processes)) if sweep.requests_per_point else [None] * processes
        )
        schedules: list[list[int] | None] = [None] * processes
    else:
        offsets = arrival_offsets_ns(
            load.kind, load_value, point_rng(sweep.seed, point_id), count=sweep.requests_per_point, duration_s=sweep.duration_s,
            burstiness=load.burstiness, ramp_up_s=load.ramp_up_s,
        )  # fmt: skip
        schedules = list(deal_schedule(offsets, processes))
        cap = load.max_concurrency
        streams = dealt(cap, processes) if cap else [0] * processes
        counts = [len(schedule) for schedule in schedules if schedule is not None]
    return [
        Share(
            worker=k,
            workers=processes,
            cpu=cpus[(first_cpu + k) % len(cpus)] if cpus else None,
            warmup=warmups[k],
            total_warmup=sweep.warmup_requests,
            requests=counts[k],
            streams=streams[k],
            offsets=schedules[k],
        )
        for k in range(processes)
    ]


@dataclass(frozen=True)
class WorkerJob:
    """Everything one client process needs, sent to it pickled."""

    share: Share
    target: Target
    prompts: list[Prompt]
    load: LoadParams
    load_value: float
    sweep: Sweep
    point_id: str
    part_path: str
    transport: Transport = "http11"


def _job(
    share: Share, target: Target, prompts: Sequence[Prompt], load: LoadParams, load_value: float, sweep: Sweep,
    point_id: str, part_path: Path, transport: Transport,
) -> WorkerJob:
    # Each process sees the prompts in its own order, so its local index i sends the prompt of global index g(i).
    wanted = share.warmup + (share.requests if share.requests is not None else math.ceil(len(prompts) / share.workers))
    arranged = [prompts[share.global_index(i) % len(prompts)] for i in range(max(1, wanted))]
    own_sweep = sweep.model_copy(update={"warmup_requests": share.warmup, "requests_per_point": share.requests})
    if isinstance(load, ConcurrencyLoad):
        own_load: LoadParams = load
        value = float(share.streams)
    else:
        own_load = load.model_copy(update={"max_concurrency": share.streams or None})
        value = load_value
    return WorkerJob(share, target, arranged, own_load, value, own_sweep, point_id, str(part_path), transport)


# ------------------------------------------------------------------------------------------ one client process
def _worker_main(job: WorkerJob, connection: Connection) -> None:
    """A client process: pin to its core, warm up, wait for the shared anchor, run its share, report."""
    try:
        if job.share.cpu is not None:
            os.sched_setaffinity(0, {job.share.cpu})
        writer = JsonlWriter(Path(job.part_path))

        def on_record(record: RequestRecord) -> None:
            record.request_index = job.share.global_index(record.request_index)
            writer.write(record)

        def anchor() -> int:
            connection.send(("ready", None))
            return int(connection.recv())

        connections = max(1, job.share.streams, job.share.warmup)
        if not isinstance(job.load, ConcurrencyLoad) and not job.share.streams:
            connections = max(connections, 1024)
        ensure_file_descriptors(connections)  # the forkserver may have started under a lower limit

        async def go() -> PointOutcome:
            async with make_client(connections, transport=job.transport) as client:
                return await run_point(
                    client, job.target, job.prompts, job.load, job.load_value, job.sweep, job.point_id,
                    on_record, offsets=job.share.offsets, anchor_after_warmup=anchor,
                    lag_limit_ms=math.inf,  # judged once, by the parent, over every process's lags
                )  # fmt: skip

        from servelab.aio import run_sync

        try:
            outcome = run_sync(go())
        finally:
            writer.close()
        connection.send(("done", outcome))
    except BaseException as error:  # the parent reports it; a process must never die silently
        with contextlib.suppress(OSError, ValueError):
            connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        connection.close()


_CONTEXT: Any = None


def _context() -> Any:
    """A forkserver context whose server has servelab's client imported once: each process then starts in
    milliseconds, not the seconds a fresh interpreter takes to import it, and no thread of the caller is forked."""
    global _CONTEXT
    if _CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _CONTEXT = context
    return _CONTEXT


def _run_processes(jobs: list[WorkerJob], window: PointWindow) -> list[PointOutcome]:
    """Start one process per job, hand out one anchor once all have warmed up, and collect their outcomes."""
    context = _context()
    pipes, processes = [], []
    try:
        for job in jobs:
            parent_end, child_end = context.Pipe()
            # Daemonic: a parent that exits (Ctrl-C, a dead engine) takes its client processes with it.
            process = context.Process(
                target=_worker_main, args=(job, child_end), name=f"servelab-client-{job.share.worker}", daemon=True
            )
            process.start()
            child_end.close()
            pipes.append(parent_end)
            processes.append(process)
        _await_all(pipes, jobs, "ready")
        window.on_start()
        anchor = now_ns() + max(START_LEAD_NS, ANCHOR_LEAD_NS)
        for pipe in pipes:
            pipe.send(anchor)
        outcomes = _await_all(pipes, jobs, "done")
        window.on_end()
        for process in processes:
            process.join(timeout=10)
        return outcomes
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for pipe in pipes:
            pipe.close()


def _await_all(pipes: list[Connection], jobs: list[WorkerJob], expected: str) -> list[Any]:
    """Each process's next message, which must be `expected`; an error or a dead process raises at once."""
    answers: dict[int, Any] = {}
    waiting = {id(pipe): index for index, pipe in enumerate(pipes)}
    while len(answers) < len(pipes):
        for ready in wait([p for p in pipes if waiting.get(id(p)) is not None and waiting[id(p)] not in answers]):
            index = waiting[id(ready)]
            assert isinstance(ready, Connection)
            try:
                kind, value = ready.recv()
            except EOFError:
                kind, value = "error", "the process exited without a word (killed, or out of memory)"
            if kind != expected:
                raise ClientCapacityError(
                    f"point {jobs[index].point_id}: client process {index} of {len(pipes)} failed: {value}; run the "
                    f"point with sweep.client_processes: 1 to see the failure in this process"
                )
            answers[index] = value
    return [answers[index] for index in range(len(pipes))]


# ------------------------------------------------------------------------------------------ the point
def _nothing() -> None:
    return None


@dataclass(frozen=True)
class PointWindow:
    """Two calls that bracket a point's load as tightly as the client can, for whoever reads something around it
    (servelab.checks.agreement reads the engine's own counters)."""

    on_start: Callable[[], None] = _nothing
    """Once every client is ready (processes started, warm-ups done), just before the anchor the streams start from."""
    on_end: Callable[[], None] = _nothing
    """As soon as the last request has ended, before the records of several processes are merged."""


async def _run_point_here(
    client: StreamClient, target: Target, prompts: list[Prompt], load: LoadParams, load_value: float, sweep: Sweep,
    point_id: str, on_record: Callable[[RequestRecord], None], window: PointWindow,
) -> PointOutcome:
    """`load.run_point` in this process, bracketed by `window`."""

    def anchor() -> int:
        window.on_start()
        return now_ns() + START_LEAD_NS

    outcome = await run_point(client, target, prompts, load, load_value, sweep, point_id, on_record, anchor_after_warmup=anchor)
    window.on_end()
    return outcome


def part_paths(parts_dir: Path, point_id: str, processes: int) -> list[Path]:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", point_id)
    return [parts_dir / f"{safe}.{k}.jsonl" for k in range(processes)]


def merge_parts(paths: Sequence[Path]) -> list[RequestRecord]:
    """The records of every part file, in completion order (end_ns; ties by request index)."""
    names = {f.name for f in dataclasses.fields(RequestRecord)}
    records = [RequestRecord(**{k: v for k, v in row.items() if k in names}) for path in paths for row in read_jsonl(path)]
    records.sort(key=lambda r: (r.end_ns, r.request_index))
    return records


def merged_outcome(point_id: str, outcomes: Sequence[PointOutcome], records: Sequence[RequestRecord], limit_ms: float) -> PointOutcome:
    """One PointOutcome for the point: counts summed, schedule lag over every measured request of every process."""
    lags_ms = np.asarray(
        [(r.actual_send_ns - r.intended_send_ns) / 1e6 for r in records if not r.warmup and r.actual_send_ns], dtype=float
    )
    p50 = float(np.percentile(lags_ms, 50)) if lags_ms.size else None
    p99 = float(np.percentile(lags_ms, 99)) if lags_ms.size else None
    if p99 is None or p99 > limit_ms:
        log.warning("point %s: schedule not kept (p99 lag %s ms > %.3g ms)", point_id, p99, limit_ms)
    return PointOutcome(
        point_id=point_id,
        requests=sum(o.requests for o in outcomes),
        errors=sum(o.errors for o in outcomes),
        lag_p50_ms=p50,
        lag_p99_ms=p99,
        schedule_kept=p99 is not None and p99 <= limit_ms,
        start_ns=min(o.start_ns for o in outcomes),
        end_ns=max(o.end_ns for o in outcomes),
        lag_limit_ms=limit_ms,
        warmup_requests=sum(o.warmup_requests for o in outcomes),
        max_in_flight=sum(o.max_in_flight for o in outcomes),
    )


def drive_point(
    client: StreamClient,
    target: Target,
    prompts: list[Prompt],
    load: LoadParams,
    load_value: float,
    sweep: Sweep,
    point_id: str,
    on_record: Callable[[RequestRecord], None],
    *,
    parts_dir: Path,
    ceiling: ClientCeiling | None = None,
    first_cpu: int = 0,
    window: PointWindow | None = None,
) -> Coroutine[Any, Any, PointOutcome]:
    """The point in this process (`load.run_point` on `client`), or over sweep.client_processes processes: a
    count, or 'auto' (`processes_for` against `ceiling`); `window` brackets its load either way."""
    cpus = usable_cpus()
    processes = processes_for(sweep.client_processes, load, load_value, sweep.output_tokens, ceiling, len(cpus))
    if processes == 1:
        if window is None:
            return run_point(client, target, prompts, load, load_value, sweep, point_id, on_record)
        return _run_point_here(client, target, prompts, load, load_value, sweep, point_id, on_record, window)
    return run_point_in_processes(
        processes, target, prompts, load, load_value, sweep, point_id, on_record, parts_dir,
        cpus=cpus, first_cpu=first_cpu * processes, window=window,
    )  # fmt: skip


async def run_point_in_processes(
    processes: int,
    target: Target,
    prompts: list[Prompt],
    load: LoadParams,
    load_value: float,
    sweep: Sweep,
    point_id: str,
    on_record: Callable[[RequestRecord], None],
    parts_dir: Path,
    *,
    cpus: Sequence[int] | None = None,
    first_cpu: int = 0,
    lag_limit_ms: float | None = None,
    transport: Transport = "http11",
    window: PointWindow | None = None,
) -> PointOutcome:
    """`load.run_point`, driven by `processes` client processes pinned to `cpus` (default: every usable core).

    `on_record` gets every record of the point once the point ends, merged in completion order. Tokens are
    counted as the server reports them (no token_counter). `window` brackets the load: from every process
    ready to the last one done, before the merge."""
    if not prompts:
        raise ValueError(f"point {point_id}: no prompts to send")
    cpus = list(cpus) if cpus is not None else usable_cpus()
    if isinstance(load, ConcurrencyLoad):
        processes = min(processes, int(load_value))
    elif load.max_concurrency:
        processes = min(processes, load.max_concurrency)  # each process caps its share: none may get a cap of 0
    shares = plan_shares(processes, load, load_value, sweep, point_id, cpus, first_cpu)
    parts_dir.mkdir(parents=True, exist_ok=True)
    paths = part_paths(parts_dir, point_id, processes)
    for path in paths:
        path.unlink(missing_ok=True)  # a part left by a point that was killed and is now run again
    jobs = [
        _job(share, target, prompts, load, load_value, sweep, point_id, path, transport)
        for share, path in zip(shares, paths, strict=True)
    ]
    outcomes = await asyncio.to_thread(_run_processes, jobs, window or PointWindow())
    records = merge_parts(paths)
    for record in records:
        on_record(record)
    for path in paths:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        parts_dir.rmdir()
    limit_ms = lag_limit_ms if lag_limit_ms is not None else schedule_lag_limit_ms(load.kind, load_value)
    return merged_outcome(point_id, outcomes, records, limit_ms)
