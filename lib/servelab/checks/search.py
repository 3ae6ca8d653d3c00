"""The search for the highest throughput: raise the load step by step until more stops paying or an SLO breaks.

It drives `servelab.measure.load.run_point` and judges each step with `servelab.analyse.metrics`, so it sits
above both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from servelab.analyse import metrics
from servelab.measure.clients import Target
from servelab.measure.http11 import StreamClient
from servelab.measure.load import PointOutcome, run_point
from servelab.measure.prompts import Prompt
from servelab.params import ConcurrencyLoad, LoadParams, RateLoad, Sweep
from servelab.records import RequestRecord


@dataclass(slots=True)
class SearchStep:
    """One point the search tried."""

    load_value: float
    outcome: PointOutcome
    output_tokens_per_s: float
    gain: float | None
    """Relative throughput gain over the previous step; None for the first."""
    slo_values_ms: dict[str, float | None]
    """The SLO metrics at the search's percentile (ttft, tpot, e2e), ms."""
    meets_slo: bool


@dataclass(slots=True)
class ThroughputSearch:
    """The steps tried, the knee (the last step worth its load), and why the search stopped."""

    load_kind: str
    steps: list[SearchStep]
    knee: SearchStep | None
    stop_reason: str
    """'gain_below_min' | 'slo_broken' | 'max_value' | 'errors'"""


def _percentile_ms(values: list[float | None], q: float) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.percentile(present, q)) if present else None


def _step(
    value: float,
    outcome: PointOutcome,
    records: list[RequestRecord],
    previous: SearchStep | None,
    slo: metrics.Slo | None,
    percentile: float,
) -> SearchStep:
    measured = [r for r in records if not r.warmup]
    throughput = metrics.output_tokens_per_s(measured, metrics.duration_s(measured))
    values = {
        "ttft": _percentile_ms([metrics.ttft_ms(r) for r in measured], percentile),
        "tpot": _percentile_ms([metrics.tpot_ms(r) for r in measured], percentile),
        "e2e": _percentile_ms([metrics.e2e_ms(r) for r in measured], percentile),
    }
    meets = True
    if slo is not None:
        for name, limit in (("ttft", slo.ttft_ms), ("tpot", slo.tpot_ms), ("e2e", slo.e2e_ms)):
            got = values[name]
            if limit is not None and (got is None or got > limit):
                meets = False
    gain = None
    if previous is not None and previous.output_tokens_per_s > 0:
        gain = throughput / previous.output_tokens_per_s - 1.0
    return SearchStep(value, outcome, throughput, gain, values, meets)


async def find_max_throughput(
    client: StreamClient,
    target: Target,
    prompts: list[Prompt],
    sweep: Sweep,
    on_record: Callable[[RequestRecord], None],
    *,
    load_kind: str = "concurrency",
    start: float = 1,
    factor: float = 2.0,
    max_value: float = 256,
    min_gain: float = 0.05,
    slo: metrics.Slo | None = None,
    slo_percentile: float = 99.0,
    max_error_rate: float = 0.5,
    point_id_prefix: str = "search",
) -> ThroughputSearch:
    """Raise concurrency (or rate) by `factor` from `start` until output tokens/s gains less than `min_gain`
    over the previous step, the SLO breaks at `slo_percentile`, errors pass `max_error_rate`, or `max_value`.

    The knee is the last step that met the SLO and still paid: on a small gain, the step before it; on a
    broken SLO, the last step that met it. The client's pool must allow `max_value` connections. Each step
    starts where the previous one stopped in `prompts`, so steps share no prompt (and no prefix cache)
    while the list is long enough.
    """
    if factor <= 1:
        raise ValueError(f"factor must be above 1, got {factor}")
    if not prompts:
        raise ValueError("the search needs prompts to send")
    steps: list[SearchStep] = []
    value = start
    reason = "max_value"
    while value <= max_value:
        collected: list[RequestRecord] = []

        def keep(record: RequestRecord, collected: list[RequestRecord] = collected) -> None:
            collected.append(record)
            on_record(record)

        point_id = f"{point_id_prefix}-{load_kind}-{value:g}"
        offset = sum(s.outcome.requests + s.outcome.warmup_requests for s in steps) % len(prompts)
        rotated = prompts[offset:] + prompts[:offset]
        load: LoadParams = (
            ConcurrencyLoad(values=(int(value),)) if load_kind == "concurrency" else RateLoad(kind=load_kind, values=(value,))  # type: ignore[arg-type]
        )
        outcome = await run_point(client, target, rotated, load, value, sweep, point_id, keep)
        step = _step(value, outcome, collected, steps[-1] if steps else None, slo, slo_percentile)
        steps.append(step)
        if outcome.requests and outcome.errors / outcome.requests > max_error_rate:
            reason = "errors"
            break
        if not step.meets_slo:
            reason = "slo_broken"
            break
        if step.gain is not None and step.gain < min_gain:
            reason = "gain_below_min"
            break
        next_value = value * factor
        value = math.ceil(next_value) if load_kind == "concurrency" else next_value
    knee: SearchStep | None
    if reason in ("gain_below_min", "slo_broken", "errors"):
        knee = steps[-2] if len(steps) >= 2 else None
        if reason == "gain_below_min" and knee is None:
            knee = steps[-1]
    else:
        knee = steps[-1] if steps else None
    return ThroughputSearch(load_kind, steps, knee, reason)
