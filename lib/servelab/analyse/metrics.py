"""Metrics: pure functions over `RequestRecord`s, each with its formula in its docstring and its unit in its name.

Per-request latencies are defined on successful requests only; warm-up records never enter a metric
(`summarize` drops them). docs/metrics.md has every definition and how each maps to `vllm bench serve`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from servelab.measure.tokens import output_tokens
from servelab.records import PointRecord, RequestRecord

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
DISTRIBUTION_STATS = ("count", "mean", "std", "min") + tuple(name for name, _ in PERCENTILES) + ("max",)
ID_COLUMNS = [
    "point_id",
    "deployment",
    "framework",
    "model",
    "language",
    "load_kind",
    "load_value",
    "interference",
]
SUMMARY_COLUMNS = ID_COLUMNS + ["metric", "stat", "value", "unit"]


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives; a request meets them when every limit that is set holds (value <= limit)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    from_intended: bool = False
    itl_ms: float | None = None
    """Limit on the request's mean ITL (`mean_itl_ms`)."""
    """Measure TTFT and E2E from the intended send time (open loop: includes the client's own lag)."""


# ------------------------------------------------------------------------------------------ per request
def ttft_ms(record: RequestRecord) -> float | None:
    """TTFT = (first_token_ns - actual_send_ns) / 1e6: send to the first chunk carrying output text, ms."""
    if not record.ok or record.first_token_ns is None:
        return None
    return (record.first_token_ns - record.actual_send_ns) / NS_PER_MS


def ttft_from_intended_ms(record: RequestRecord) -> float | None:
    """TTFT from intent = (first_token_ns - intended_send_ns) / 1e6, ms; adds the client's schedule lag."""
    if not record.ok or record.first_token_ns is None:
        return None
    return (record.first_token_ns - record.intended_send_ns) / NS_PER_MS


def e2e_ms(record: RequestRecord) -> float | None:
    """E2E = (end_ns - actual_send_ns) / 1e6: send to the end of the response stream, ms."""
    if not record.ok:
        return None
    return (record.end_ns - record.actual_send_ns) / NS_PER_MS


def e2e_from_intended_ms(record: RequestRecord) -> float | None:
    """E2E from intent = (end_ns - intended_send_ns) / 1e6, ms."""
    if not record.ok:
        return None
    return (record.end_ns - record.intended_send_ns) / NS_PER_MS


def tpot_ms(record: RequestRecord) -> float | None:
    """TPOT = (E2E - TTFT) / (output_tokens - 1), ms per token, first token excluded; None below 2 tokens."""
    tokens = output_tokens(record)
    if not record.ok or record.first_token_ns is None or tokens is None or tokens < 2:
        return None
    return (record.end_ns - record.first_token_ns) / NS_PER_MS / (tokens - 1)


def itl_ms(record: RequestRecord) -> list[float]:
    """ITL = chunk_ns[i] - chunk_ns[i-1] for i >= 1, ms: gaps between content chunks.

    A chunk may carry several tokens (servers batch them, or hold back a partial UTF-8 character), so an
    ITL can span more than one token and the ITLs of a request sum to last chunk - first chunk, not E2E - TTFT.
    """
    if not record.ok:
        return []
    times = record.chunk_ns
    return [(times[i] - times[i - 1]) / NS_PER_MS for i in range(1, len(times))]


def mean_itl_ms(record: RequestRecord) -> float | None:
    """Mean ITL = (chunk_ns[-1] - chunk_ns[0]) / (chunks - 1) / 1e6, ms: a request's mean gap between content
    chunks; None below 2 chunks."""
    if not record.ok or len(record.chunk_ns) < 2:
        return None
    return (record.chunk_ns[-1] - record.chunk_ns[0]) / NS_PER_MS / (len(record.chunk_ns) - 1)


def server_eval_tok_s(record: RequestRecord) -> float | None:
    """Server eval rate = eval_count / (eval_duration / 1e9), tokens/s: the decode rate the server itself reports
    (Ollama's last object), kept beside the client's figures and never used instead of them; None without both."""
    timings = record.server_timings or {}
    count, duration_ns = timings.get("eval_count"), timings.get("eval_duration")
    if not record.ok or not isinstance(count, int | float) or not isinstance(duration_ns, int | float) or duration_ns <= 0:
        return None
    return count / (duration_ns / NS_PER_S)


def schedule_lag_ms(record: RequestRecord) -> float | None:
    """Schedule lag = (actual_send_ns - intended_send_ns) / 1e6, ms; None if the request was never sent."""
    if not record.actual_send_ns:
        return None
    return (record.actual_send_ns - record.intended_send_ns) / NS_PER_MS


def meets_slo(record: RequestRecord, slo: Slo) -> bool:
    """True when the request succeeded and TTFT <= slo.ttft_ms, mean ITL <= slo.itl_ms, TPOT <= slo.tpot_ms and
    E2E <= slo.e2e_ms (those set).

    As in vLLM's goodput, a request of fewer than 2 output tokens counts as TPOT = 0; one of fewer than 2 chunks
    counts as mean ITL = 0.
    """
    if not record.ok:
        return False
    ttft = ttft_from_intended_ms(record) if slo.from_intended else ttft_ms(record)
    e2e = e2e_from_intended_ms(record) if slo.from_intended else e2e_ms(record)
    tpot = tpot_ms(record) or 0.0
    if slo.ttft_ms is not None and (ttft is None or ttft > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and tpot > slo.tpot_ms:
        return False
    if slo.itl_ms is not None and (mean_itl_ms(record) or 0.0) > slo.itl_ms:
        return False
    return not (slo.e2e_ms is not None and (e2e is None or e2e > slo.e2e_ms))


# ------------------------------------------------------------------------------------------ per point
def duration_s(records: Sequence[RequestRecord]) -> float:
    """Duration = (max end_ns - min intended_send_ns) / 1e9 over the point's measured requests, s."""
    if not records:
        return 0.0
    start = min(r.intended_send_ns for r in records)
    end = max(max(r.end_ns, r.actual_send_ns, r.intended_send_ns) for r in records)
    return (end - start) / NS_PER_S


def output_tokens_per_s(records: Iterable[RequestRecord], duration_s: float) -> float:
    """Output throughput = sum(output_tokens of successful requests) / duration_s, tokens/s."""
    total = sum(output_tokens(r) or 0 for r in records if r.ok)
    return total / duration_s if duration_s > 0 else math.nan


def total_tokens_per_s(records: Iterable[RequestRecord], duration_s: float) -> float:
    """Total throughput = sum(prompt_tokens + output_tokens of successful requests) / duration_s, tokens/s."""
    total = sum((r.prompt_tokens or 0) + (output_tokens(r) or 0) for r in records if r.ok)
    return total / duration_s if duration_s > 0 else math.nan


def requests_per_s(records: Iterable[RequestRecord], duration_s: float) -> float:
    """Request throughput = count(successful requests) / duration_s, requests/s."""
    completed = sum(1 for r in records if r.ok)
    return completed / duration_s if duration_s > 0 else math.nan


def goodput_requests_per_s(records: Iterable[RequestRecord], duration_s: float, slo: Slo) -> float:
    """Goodput = count(requests meeting every SLO, see meets_slo) / duration_s, requests/s."""
    good = sum(1 for r in records if meets_slo(r, slo))
    return good / duration_s if duration_s > 0 else math.nan


def success_fraction(records: Sequence[RequestRecord]) -> float:
    """Success rate = count(successful) / count(all measured requests), a fraction in [0, 1]."""
    return sum(1 for r in records if r.ok) / len(records) if records else math.nan


def percent_off(value: float | None, reference: float | None) -> float | None:
    """How far `value` is from `reference`, in % of `reference`, to two decimals; None where either is missing or
    the reference is 0. Every comparison of servelab's figures (against another client, a planner) uses it."""
    return None if value is None or not reference else round(100.0 * (value - reference) / reference, 2)


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """count, mean, std (population, as numpy and vLLM), min, p50, p90, p95, p99, p99.9 (linear interpolation), max."""
    if len(values) == 0:
        return {"count": 0.0}
    array = np.asarray(values, dtype=float)
    stats = {
        "count": float(array.size),
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
    }
    for name, q in PERCENTILES:
        stats[name] = float(np.percentile(array, q))
    stats["max"] = float(array.max())
    return stats


# ------------------------------------------------------------------------------------------ tables
REQUEST_METRICS = (
    ("ttft_ms", "ms", ttft_ms),
    ("ttft_from_intended_ms", "ms", ttft_from_intended_ms),
    ("tpot_ms", "ms", tpot_ms),
    ("e2e_ms", "ms", e2e_ms),
    ("e2e_from_intended_ms", "ms", e2e_from_intended_ms),
)
"""Distribution metrics of the summary: (metric name, unit, function of one record)."""


def _point_rows(
    point_id: str, records: list[RequestRecord], point: PointRecord | None, slo: Slo | None
) -> list[dict]:
    first = records[0] if records else None
    ids = {
        "point_id": point_id,
        "deployment": point.deployment if point else first.deployment if first else None,
        "framework": point.framework if point else first.framework if first else None,
        "model": point.model if point else first.model if first else None,
        "language": point.language if point else first.language if first else None,
        "load_kind": point.load_kind if point else None,
        "load_value": float(point.load_value) if point else math.nan,
        "interference": bool(point.interference) if point else False,
    }
    rows: list[dict] = []

    def emit(metric: str, unit: str, stats: dict[str, float]) -> None:
        rows.extend({**ids, "metric": metric, "stat": s, "value": v, "unit": unit} for s, v in stats.items())

    ok = [r for r in records if r.ok]
    for metric, unit, function in REQUEST_METRICS:
        emit(metric, unit, distribution([v for v in map(function, ok) if v is not None]))
    # The same gaps as itl_ms, in numpy: a point can hold millions of them.
    gaps = [np.diff(np.asarray(r.chunk_ns, dtype=np.int64)) for r in ok if len(r.chunk_ns) > 1]
    emit("itl_ms", "ms", distribution(np.concatenate(gaps) / NS_PER_MS if gaps else []))
    emit("schedule_lag_ms", "ms", distribution([v for v in map(schedule_lag_ms, records) if v is not None]))
    emit(
        "prompt_tokens", "tokens", distribution([r.prompt_tokens for r in ok if r.prompt_tokens is not None])
    )
    emit("output_tokens", "tokens", distribution([n for n in map(output_tokens, ok) if n is not None]))
    server_rates = [v for v in map(server_eval_tok_s, ok) if v is not None]
    if server_rates:  # only servers that report it (Ollama): no empty rows for the others
        emit("server_eval_tok_s", "tok/s", distribution(server_rates))
    seconds = duration_s(records)
    scalars = {
        "requests": (len(records), "count"),
        "errors": (len(records) - len(ok), "count"),
        "success_rate": (success_fraction(records), "fraction"),
        "duration_s": (seconds, "s"),
        "req_s": (requests_per_s(records, seconds), "req/s"),
        "output_tok_s": (output_tokens_per_s(records, seconds), "tok/s"),
        "total_tok_s": (total_tokens_per_s(records, seconds), "tok/s"),
    }
    if slo is not None:
        scalars["goodput_req_s"] = (goodput_requests_per_s(records, seconds, slo), "req/s")
    if point is not None and point.schedule_kept is not None:
        scalars["schedule_kept"] = (float(point.schedule_kept), "bool")
    for metric, (value, unit) in scalars.items():
        emit(metric, unit, {"value": float(value)})
    return rows


def summarize(
    records: Iterable[RequestRecord], points: dict[str, PointRecord] | None = None, *, slo: Slo | None = None
) -> pd.DataFrame:
    """Tidy metrics: one row per point x metric x stat (SUMMARY_COLUMNS); warm-up records left out.

    Distribution metrics (REQUEST_METRICS, itl_ms, schedule_lag_ms, prompt_tokens, output_tokens) give
    DISTRIBUTION_STATS; throughputs and counts (requests, errors, success_rate, duration_s, req_s,
    output_tok_s, total_tok_s, goodput_req_s with `slo`, schedule_kept) give stat='value'. `points`
    supplies load_kind, load_value, interference and schedule_kept; without it those are empty.
    """
    by_point: dict[str, list[RequestRecord]] = {}
    for record in records:
        if not record.warmup:
            by_point.setdefault(record.point_id, []).append(record)
    point_ids = list(by_point) + [p for p in (points or {}) if p not in by_point]
    rows: list[dict] = []
    for point_id in point_ids:
        rows.extend(_point_rows(point_id, by_point.get(point_id, []), (points or {}).get(point_id), slo))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def wide(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per point, one column per metric and stat, named like 'ttft_ms p99' or 'output_tok_s'."""
    if summary.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    labels = summary["metric"] + summary["stat"].map(lambda s: "" if s == "value" else f" {s}")
    order = list(dict.fromkeys(labels))
    table = summary.assign(column=labels).set_index(ID_COLUMNS + ["column"])["value"].unstack("column")
    return table.reindex(columns=order).reset_index().rename_axis(columns=None)


def error_breakdown(records: Iterable[RequestRecord]) -> pd.DataFrame:
    """Failed measured requests per point and error class: columns point_id, error_class, requests."""
    counts: dict[tuple[str, str], int] = {}
    for record in records:
        if not record.warmup and record.error_class is not None:
            key = (record.point_id, record.error_class)
            counts[key] = counts.get(key, 0) + 1
    rows = [{"point_id": p, "error_class": e, "requests": n} for (p, e), n in sorted(counts.items())]
    return pd.DataFrame(rows, columns=["point_id", "error_class", "requests"])
