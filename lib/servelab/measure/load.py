"""When to send: closed-loop concurrency and open-loop rates (constant, Poisson, gamma), warm-up, ramp-up,
by request count or by duration. (The search for the highest load is servelab.checks.search.)

Open-loop arrival times are computed before the point starts, as offsets from one anchor, and the sender
sleeps *until* each intended time (never *for* an interval), so lateness never accumulates. Every record
carries `intended_send_ns` and `actual_send_ns`; in a closed loop the intended time is when the worker
became free (the end of its previous request). The point's schedule is kept when the p99 of
actual - intended is within `schedule_lag_limit_ms` (see docs/metrics.md, 'Schedule lag').
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from servelab.clock import now_ns
from servelab.errors import ClientCapacityError
from servelab.measure.clients import Target, TokenCounter, make_client, send
from servelab.measure.http11 import StreamClient
from servelab.measure.prompts import Prompt
from servelab.params import ConcurrencyLoad, LoadParams, Sweep
from servelab.records import RequestRecord

__all__ = [
    "PointOutcome",
    "arrival_offsets_ns",
    "ensure_file_descriptors",
    "make_client",
    "run_point",
    "schedule_lag_limit_ms",
    "sleep_until",
]

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
LAG_LIMIT_MS = 5.0
"""A point's schedule is kept when p99 lag <= 5 ms ..."""
LAG_LIMIT_FRACTION = 0.05
"""... and, open loop, <= 5% of the mean interval between arrivals ..."""
LAG_FLOOR_MS = 1.0
"""... but the relative limit is never tighter than 1 ms."""
SPIN_NS = 200_000
"""The last stretch before an intended time is waited by yielding to the loop, not by a timer (timers wake ~1 ms late)."""
START_LEAD_NS = 2_000_000
"""The anchor is this far ahead of the moment the schedule is ready, so the first arrival is not born late."""
MAX_SCHEDULED_ARRIVALS = 10_000_000
FD_HEADROOM = 64
"""Open files kept free beyond one socket per connection: the run's files, logs, the event loop, libraries."""


def ensure_file_descriptors(connections: int) -> int:
    """Make room for `connections` sockets before a point starts: raise the soft RLIMIT_NOFILE up to the hard
    limit when it is short, and return the soft limit in force. Raises ClientCapacityError when even the hard
    limit is short, so that a run is refused at its start instead of failing with EMFILE half-way through."""
    needed = connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ClientCapacityError(
            f"{connections:,} concurrent connections need about {needed:,} open files, but this process may open "
            f"at most {hard:,} (the hard RLIMIT_NOFILE); raise it (`ulimit -Hn {needed}` as root, docker "
            f"`--ulimit nofile={needed}:{needed}`, systemd LimitNOFILE={needed}) or lower the sweep's concurrency "
            f"or max_concurrency"
        )
    raised = hard if hard != resource.RLIM_INFINITY else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError) as error:
        raise ClientCapacityError(
            f"{connections:,} concurrent connections need about {needed:,} open files; the soft RLIMIT_NOFILE is "
            f"{soft:,} and raising it to {raised:,} failed ({error}); raise it with `ulimit -n {needed}` first"
        ) from None
    log.info("raised the open-file limit from %d to %d for %d connections", soft, raised, connections)
    return raised


@dataclass(slots=True)
class PointOutcome:
    """What one load point did; copy it into the PointRecord (start_ns/end_ns are the measured window)."""

    point_id: str
    requests: int
    """Measured requests sent (warm-up excluded)."""
    errors: int
    """Measured requests that failed."""
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    schedule_kept: bool
    start_ns: int
    """The anchor: the first measured request's intended send time."""
    end_ns: int
    """When the last measured request ended."""
    lag_limit_ms: float = LAG_LIMIT_MS
    warmup_requests: int = 0
    max_in_flight: int = 0


def schedule_lag_limit_ms(load_kind: str, load_value: float) -> float:
    """The p99 lag a point may have and still count as kept: 5 ms closed loop; open loop
    min(5 ms, max(1 ms, 5% of the mean interval 1000 / rate ms))."""
    if load_kind == "concurrency":
        return LAG_LIMIT_MS
    mean_interval_ms = 1000.0 / load_value
    return min(LAG_LIMIT_MS, max(LAG_FLOOR_MS, LAG_LIMIT_FRACTION * mean_interval_ms))


def arrival_offsets_ns(
    kind: str,
    rate: float,
    rng: random.Random,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    burstiness: float = 1.0,
    ramp_up_s: float = 0.0,
) -> list[int]:
    """Intended send times, ns after the anchor, of an open-loop point; the first is 0.

    Intervals: constant 1/rate; poisson Exp(rate); gamma Gamma(shape=burstiness, scale=1/(rate*burstiness))
    (mean 1/rate; burstiness < 1 is burstier). With `ramp_up_s` = R the rate rises linearly from 0 to
    `rate` over R: arrivals of the steady process at operational time u are placed at t = sqrt(2*R*u) for
    u < R/2, else u + R/2. Stops after `count` arrivals or at `duration_s`, whichever comes first.
    """
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
    if count is None and duration_s is None:
        raise ValueError("give count or duration_s")
    expected = min(count if count is not None else math.inf, (duration_s or math.inf) * rate + 1)
    if expected > MAX_SCHEDULED_ARRIVALS:
        raise ClientCapacityError(
            f"{expected:.0f} arrivals at {rate:g} req/s is more than one point can schedule ({MAX_SCHEDULED_ARRIVALS}); "
            "lower the rate, duration_s or requests_per_point"
        )
    if kind == "constant":
        interval = lambda: 1.0 / rate  # noqa: E731
    elif kind == "poisson":
        interval = lambda: rng.expovariate(rate)  # noqa: E731
    elif kind == "gamma":
        scale = 1.0 / (rate * burstiness)
        interval = lambda: rng.gammavariate(burstiness, scale)  # noqa: E731
    else:
        raise ValueError(f"unknown open-loop kind {kind!r}; use constant, poisson or gamma")
    limit_s = duration_s if duration_s is not None else math.inf
    offsets: list[int] = []
    u = 0.0
    while count is None or len(offsets) < count:
        t = math.sqrt(2.0 * ramp_up_s * u) if u < ramp_up_s / 2 else u + ramp_up_s / 2
        if t >= limit_s:
            break
        offsets.append(round(t * NS_PER_S))
        u += interval()
    return offsets


async def sleep_until(target_ns: int) -> None:
    """Sleep until the one clock reads `target_ns`: a timer for whole milliseconds, then yield until due."""
    while True:
        remaining = target_ns - now_ns()
        if remaining <= 0:
            return
        whole_ms = (remaining - SPIN_NS) // 1_000_000
        # The loop's selector rounds timeouts up to whole ms; sleeping whole ms keeps the wake-up on time.
        await asyncio.sleep(whole_ms / 1000 if whole_ms > 0 else 0)


def point_rng(seed: int, point_id: str) -> random.Random:
    """The random source of one point's arrival times, the same in every process that computes them."""
    return random.Random(f"servelab.measure.load:{seed}:{point_id}")


@dataclass(slots=True)
class _Point:
    """The mutable state of one running point."""

    client: StreamClient
    target: Target
    prompts: Sequence[Prompt]
    sweep: Sweep
    point_id: str
    on_record: Callable[[RequestRecord], None]
    token_counter: TokenCounter | None
    next_index: int = 0
    measured: int = 0
    errors: int = 0
    last_end_ns: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    lags_ns: list[int] = field(default_factory=list)

    def take(self, limit: int | None, deadline_ns: float) -> int | None:
        """The next request index, or None once the count is sent or the deadline has passed."""
        if (limit is not None and self.measured >= limit) or now_ns() >= deadline_ns:
            return None
        self.measured += 1
        return self.take_index()

    def take_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index

    async def request(self, index: int, intended_ns: int, warmup: bool) -> RequestRecord:
        prompt = self.prompts[index % len(self.prompts)]
        target = self.target
        record = RequestRecord(
            point_id=self.point_id,
            request_index=index,
            deployment=target.deployment,
            framework=target.framework,
            model=target.model,
            language=prompt.language,
            warmup=warmup,
            intended_send_ns=intended_ns,
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await send(
                self.client,
                target,
                prompt,
                api=self.sweep.api,
                output_tokens=prompt.output_tokens or self.sweep.output_tokens,
                ignore_eos=self.sweep.ignore_eos,
                timeout_s=self.sweep.request_timeout_s,
                record=record,
                token_counter=self.token_counter,
            )
        finally:
            self.in_flight -= 1
            if not warmup:
                if record.actual_send_ns:
                    self.lags_ns.append(record.actual_send_ns - record.intended_send_ns)
                self.errors += 0 if record.ok else 1
                self.last_end_ns = max(self.last_end_ns, record.end_ns)
            self.on_record(record)
        return record


async def _warm_up(point: _Point, count: int, concurrency: int) -> None:
    remaining = [count]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await point.request(point.take_index(), now_ns(), warmup=True)

    await _gather_or_cancel([asyncio.ensure_future(worker()) for _ in range(min(count, concurrency))])


async def _gather_or_cancel(tasks: list[asyncio.Future]) -> None:
    """Wait for every task; if one raises (say on_record cannot write), cancel the rest and raise it."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _closed_loop(
    point: _Point, concurrency: int, ramp_up_s: float, anchor: int, limit: int | None, deadline: float
) -> None:
    ramp_ns = round(ramp_up_s * NS_PER_S)

    async def worker(k: int) -> None:
        intended = anchor + ramp_ns * k // concurrency
        await sleep_until(intended)
        while (index := point.take(limit, deadline)) is not None:
            record = await point.request(index, intended, warmup=False)
            intended = record.end_ns or now_ns()

    await _gather_or_cancel([asyncio.ensure_future(worker(k)) for k in range(concurrency)])


async def _open_loop(point: _Point, offsets: list[int], anchor: int, max_concurrency: int | None) -> None:
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    running: set[asyncio.Task] = set()
    failures: list[BaseException] = []

    def finished(task: asyncio.Task) -> None:
        running.discard(task)
        if gate is not None:
            gate.release()
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    try:
        for offset in offsets:
            intended = anchor + offset
            await sleep_until(intended)
            if gate is not None:
                await gate.acquire()
            if failures:
                raise failures[0]
            point.measured += 1
            task = asyncio.ensure_future(point.request(point.take_index(), intended, warmup=False))
            running.add(task)
            task.add_done_callback(finished)
        if running:
            await asyncio.wait(set(running))
        if failures:
            raise failures[0]
    except BaseException:
        for task in list(running):
            task.cancel()
        if running:
            await asyncio.wait(set(running))
        raise


async def run_point(
    client: StreamClient,
    target: Target,
    prompts: list[Prompt],
    load: LoadParams,
    load_value: float,
    sweep: Sweep,
    point_id: str,
    on_record: Callable[[RequestRecord], None],
    *,
    lag_limit_ms: float | None = None,
    token_counter: TokenCounter | None = None,
    offsets: list[int] | None = None,
    anchor_after_warmup: Callable[[], int] | None = None,
) -> PointOutcome:
    """Run one load point: warm-up requests (tagged), then the measured phase; `on_record` gets each record
    as its request completes. `load` is the point's typed entry of the sweep: concurrency (`load_value`: workers)
    or constant/poisson/gamma (`load_value`: requests/s), with its burstiness, ramp-up and max_concurrency.
    The RNG is `random.Random` seeded from sweep.seed and point_id.

    For a share of a point run in several processes (servelab.measure.workers): `offsets` is this share of
    the one open-loop schedule, and `anchor_after_warmup()` returns the anchor all the shares start from.
    """
    if not prompts:
        raise ValueError(f"point {point_id}: no prompts to send")
    if load_value <= 0:
        raise ValueError(f"point {point_id}: load value must be positive, got {load_value}")
    limit = sweep.requests_per_point
    point = _Point(client, target, prompts, sweep, point_id, on_record, token_counter)
    rng = point_rng(sweep.seed, point_id)

    if isinstance(load, ConcurrencyLoad):
        concurrency = int(load_value)
        offsets = []
    else:
        concurrency = load.max_concurrency or sweep.warmup_requests
        offsets = offsets if offsets is not None else arrival_offsets_ns(
            load.kind,
            load_value,
            rng,
            count=limit,
            duration_s=sweep.duration_s,
            burstiness=load.burstiness,
            ramp_up_s=load.ramp_up_s,
        )
    if sweep.warmup_requests:
        await _warm_up(point, sweep.warmup_requests, max(1, concurrency))
    warmups = point.next_index

    anchor = anchor_after_warmup() if anchor_after_warmup is not None else now_ns() + START_LEAD_NS
    if isinstance(load, ConcurrencyLoad):
        deadline = anchor + sweep.duration_s * NS_PER_S if sweep.duration_s is not None else math.inf
        await _closed_loop(point, concurrency, load.ramp_up_s, anchor, limit, deadline)
    else:
        await _open_loop(point, offsets, anchor, load.max_concurrency)

    limit_ms = lag_limit_ms if lag_limit_ms is not None else schedule_lag_limit_ms(load.kind, load_value)
    lags_ms = np.asarray(point.lags_ns, dtype=float) / 1e6
    p50 = float(np.percentile(lags_ms, 50)) if lags_ms.size else None
    p99 = float(np.percentile(lags_ms, 99)) if lags_ms.size else None
    kept = p99 is not None and p99 <= limit_ms
    if not kept:
        log.warning("point %s: schedule not kept (p99 lag %s ms > %.3g ms)", point_id, p99, limit_ms)
    return PointOutcome(
        point_id=point_id,
        requests=point.measured,
        errors=point.errors,
        lag_p50_ms=p50,
        lag_p99_ms=p99,
        schedule_kept=kept,
        start_ns=anchor,
        end_ns=point.last_end_ns or now_ns(),
        lag_limit_ms=limit_ms,
        warmup_requests=warmups,
        max_in_flight=point.max_in_flight,
    )
