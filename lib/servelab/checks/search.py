"""The highest load that meets the SLOs: raise concurrency (or rate) step by step until the SLOs break, throughput
stops growing, errors pass the policy's limit, or the load reaches its maximum; the knee is the last step worth
its load.

`find_max_throughput` is the search over one target; `run_search` runs it for every deployment of a params file
and writes a normal run folder: each step is a load point in points.jsonl and requests.jsonl, summary.csv holds
goodput_req_s per step (with the params' SLOs), and search.json names the steps, the knee and why it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servelab.aio import run_sync
from servelab.analyse import metrics
from servelab.analyse.summary import slo_of, write_summary
from servelab.errors import OutputsError, ParamsError
from servelab.measure.clients import Target
from servelab.measure.http11 import StreamClient
from servelab.measure.load import PointOutcome, ensure_file_descriptors, make_client, run_point
from servelab.measure.prompts import Prompt
from servelab.measure.workloads import build_workload
from servelab.params import ConcurrencyLoad, LoadParams, Params, RateLoad, Sweep
from servelab.records import POINTS_FILE, REQUESTS_FILE, JsonlWriter, PointRecord, RequestRecord

SEARCH_FILE = "search.json"


@dataclass(slots=True)
class SearchStep:
    """One point the search tried."""

    load_value: float
    outcome: PointOutcome
    output_tokens_per_s: float
    gain: float | None
    """Relative throughput gain over the previous step; None for the first."""
    slo_values_ms: dict[str, float | None]
    """The SLO metrics at the search's percentile (ttft, itl, tpot, e2e), ms."""
    meets_slo: bool
    goodput_req_s: float | None = None
    """Requests per second meeting every SLO (None without SLOs)."""


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


SLO_METRICS: tuple[tuple[str, Callable[[RequestRecord], float | None]], ...] = (
    ("ttft", metrics.ttft_ms),
    ("itl", metrics.mean_itl_ms),
    ("tpot", metrics.tpot_ms),
    ("e2e", metrics.e2e_ms),
)
"""The SLO name and the per-request metric its limit applies to (at the search's percentile); with
`Slo.from_intended`, TTFT and E2E count from the intended send time."""


def _step(
    value: float,
    outcome: PointOutcome,
    records: list[RequestRecord],
    previous: SearchStep | None,
    slo: metrics.Slo | None,
    percentile: float,
) -> SearchStep:
    measured = [r for r in records if not r.warmup]
    seconds = metrics.duration_s(measured)
    throughput = metrics.output_tokens_per_s(measured, seconds)
    functions = dict(SLO_METRICS)
    if slo is not None and slo.from_intended:
        functions |= {"ttft": metrics.ttft_from_intended_ms, "e2e": metrics.e2e_from_intended_ms}
    values = {name: _percentile_ms([function(r) for r in measured], percentile) for name, function in functions.items()}
    meets = True
    if slo is not None:
        limits = {"ttft": slo.ttft_ms, "itl": slo.itl_ms, "tpot": slo.tpot_ms, "e2e": slo.e2e_ms}
        for name, limit in limits.items():
            got = values[name]
            if limit is not None and (got is None or got > limit):
                meets = False
    gain = None
    if previous is not None and previous.output_tokens_per_s > 0:
        gain = throughput / previous.output_tokens_per_s - 1.0
    goodput = metrics.goodput_requests_per_s(measured, seconds, slo) if slo is not None else None
    return SearchStep(value, outcome, throughput, gain, values, meets, goodput)


def _load_entry(sweep: Sweep, load_kind: str, value: float) -> LoadParams:
    """The typed load of one search step: the sweep's entry of this kind (its burstiness, ramp-up and cap) at
    `value`, which the search chose and the sweep need not hold; a plain entry when the sweep has none."""
    for load in sweep.load:
        if load.kind == load_kind:
            return load
    if load_kind == "concurrency":
        return ConcurrencyLoad(values=(max(1, int(value)),))
    return RateLoad(kind=load_kind, values=(value,))  # type: ignore[arg-type]


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
    on_step: Callable[[str, SearchStep], None] | None = None,
) -> ThroughputSearch:
    """Raise concurrency (or rate) by `factor` from `start` until output tokens/s gains less than `min_gain`
    over the previous step, the SLO breaks at `slo_percentile`, errors pass `max_error_rate`, or `max_value`.

    The knee is the last step that met the SLO and still paid: on a small gain, the step before it; on a
    broken SLO, the last step that met it. The client's pool must allow `max_value` connections. Each step
    starts where the previous one stopped in `prompts`, so steps share no prompt (and no prefix cache)
    while the list is long enough. `on_step` gets each step's point id and step as it ends.
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
        outcome = await run_point(client, target, rotated, _load_entry(sweep, load_kind, value), value, sweep, point_id, keep)
        step = _step(value, outcome, collected, steps[-1] if steps else None, slo, slo_percentile)
        steps.append(step)
        if on_step is not None:
            on_step(point_id, step)
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


# ------------------------------------------------------------------------------------------ a run folder
def _step_summary(step: SearchStep) -> dict[str, Any]:
    return {
        "load_value": step.load_value,
        "requests": step.outcome.requests,
        "errors": step.outcome.errors,
        "output_tok_s": step.output_tokens_per_s,
        "gain": step.gain,
        "goodput_req_s": step.goodput_req_s,
        "slo_values_ms": step.slo_values_ms,
        "meets_slo": step.meets_slo,
    }


def search_summary(search: ThroughputSearch) -> dict[str, Any]:
    """The search as JSON-ready data: every step, the knee's load and why the search stopped."""
    return {
        "load_kind": search.load_kind,
        "stop_reason": search.stop_reason,
        "knee": search.knee.load_value if search.knee is not None else None,
        "steps": [_step_summary(step) for step in search.steps],
    }


def run_search(
    params: Params, run_dir: Path, targets: Mapping[str, Target], tokenizers: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Search each target (deployment name -> Target) with `params.search` and `params.slo`, recording every step
    as a load point of `run_dir`; writes summary.csv and search.json and returns search.json's content."""
    settings = params.search
    if params.slo is None:
        raise ParamsError(
            "servelab search needs SLOs to search against: add to the params e.g. `slo: {ttft_ms: 500, itl_ms: 50}`"
        )
    slo = slo_of(params)
    language = params.sweep.languages[0]
    connections = math.ceil(settings.max_value) if settings.load_kind == "concurrency" else 1024
    ensure_file_descriptors(connections)
    results: dict[str, dict[str, Any]] = {}
    with JsonlWriter(run_dir / REQUESTS_FILE) as writer, JsonlWriter(run_dir / POINTS_FILE, fsync_every=1) as marks:
        for name, target in targets.items():
            steps = math.ceil(math.log(settings.max_value / settings.start, settings.factor)) + 1
            per_step = (params.sweep.requests_per_point or 64) + params.sweep.warmup_requests
            prompts = build_workload(
                params.sweep, language, count=per_step * steps, seed=params.sweep.seed,
                tokenizer=(tokenizers or {}).get(name),
            )
            def mark(point_id: str, step: SearchStep, name: str = name, target: Target = target) -> None:
                record = PointRecord(
                    point_id=point_id, deployment=name, framework=target.framework, model=target.model,
                    language=language, load_kind=settings.load_kind, load_value=step.load_value, status="done",
                    start_ns=step.outcome.start_ns, interference=False,
                )
                record.end_ns = step.outcome.end_ns
                record.requests = step.outcome.requests
                record.errors = step.outcome.errors
                record.schedule_lag_p99_ms = step.outcome.lag_p99_ms
                record.schedule_kept = step.outcome.schedule_kept
                marks.write(record)
                writer.sync()

            async def search_one(target: Target = target, prompts: list[Prompt] = prompts, name: str = name) -> ThroughputSearch:
                async with make_client(connections) as client:
                    return await find_max_throughput(
                        client, target, prompts, params.sweep, writer.write,
                        load_kind=settings.load_kind, start=settings.start, factor=settings.factor,
                        max_value=settings.max_value, min_gain=settings.min_gain, slo=slo,
                        slo_percentile=settings.percentile, max_error_rate=params.policy.max_error_rate,
                        point_id_prefix=f"{name}/{language}/search", on_step=mark,
                    )

            results[name] = search_summary(run_sync(search_one()))
    write_summary(run_dir, slo=slo)
    try:
        (run_dir / SEARCH_FILE).write_text(json.dumps({"slo": asdict(slo), "searches": results}, indent=2), encoding="utf-8")  # type: ignore[arg-type]
    except OSError as error:
        raise OutputsError(f"cannot write {run_dir / SEARCH_FILE}: {error.strerror}") from None
    return results


def knee_table(run_dir: Path) -> pd.DataFrame:
    """search.json as a table: one row per deployment and step, with goodput, whether it met the SLOs and the knee."""
    data = json.loads((Path(run_dir) / SEARCH_FILE).read_text(encoding="utf-8"))
    rows = [
        {
            "deployment": name,
            "load_kind": search["load_kind"],
            "load_value": step["load_value"],
            "output_tok_s": step["output_tok_s"],
            "goodput_req_s": step["goodput_req_s"],
            "meets_slo": step["meets_slo"],
            "knee": step["load_value"] == search["knee"],
            "stop_reason": search["stop_reason"],
        }
        for name, search in data["searches"].items()
        for step in search["steps"]
    ]
    return pd.DataFrame(rows)
