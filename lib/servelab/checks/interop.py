"""Other benchmark clients' result files: a run exported as `vllm bench serve` results or as a GuideLLM report, and
`vllm bench serve`, SGLang bench_serving, GuideLLM, AIPerf and llmperf results read into servelab's tidy summary
schema (`RESULTS_FORMATS`, tried in order), so `compare` and the plots can show them together.

The formats come from the upstream source, not from examples:
- vLLM: `vllm/benchmarks/serve.py` (`calculate_metrics`, `benchmark`, `main_async`). `--save-result` writes one
  JSON object, and `--append-result` writes several, one per line. `--save-detailed` keeps the per-request lists
  (`ttfts`, `itls`, `input_lens`, ...). `--metadata KEY=VALUE` adds top-level keys. servelab's export fills
  `deployment`, `framework`, `language`, `load_kind`, `load_value`, `point_id` and `interference` that way, and
  the import reads them back when present (and `model` over `model_id`): give them to a real `vllm bench serve`
  with `--metadata deployment=NAME model=NAME language=en` so its results line up with a servelab run.
- SGLang: `python/sglang/bench_serving.py` (`calculate_metrics`, `benchmark`): `--output-file` appends one JSON
  object per run; E2E is `*_e2e_latency_ms`, and the total throughput is input + output throughput.
- GuideLLM: `GenerativeBenchmarksReport` (`guidellm/benchmark/schemas/generative/`), written by
  `guidellm benchmark --output-path x.json`: `benchmarks[].metrics.<name>.successful` is a `DistributionSummary`
  (`guidellm/schemas/statistics.py`).
- AIPerf: `profile_export_aiperf.json` (`exporters/metrics_json_exporter.py`): each metric tag at the top level.
- llmperf: `token_benchmark_ray.py`'s `*_summary.json`, `LLMPerfResults.to_dict()` flattened with `_`.

Imported numbers keep their tool's definitions. GuideLLM's `inter_token_latency_ms` is vLLM's and servelab's
TPOT. It is read as `tpot_ms`, but its distribution is weighted by output tokens, and its percentiles are
nearest-rank. GuideLLM has no per-chunk ITL, so `itl_ms` is absent. AIPerf's inter_token_latency is TPOT too,
and its inter_chunk_latency servelab's ITL. llmperf's inter-token latency is its own (`llmperf_inter_token_latency_ms`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from servelab.analyse.metrics import DISTRIBUTION_STATS, SUMMARY_COLUMNS, distribution, duration_s
from servelab.errors import ServelabError
from servelab.measure.tokens import output_tokens
from servelab.records import (
    MANIFEST_FILE,
    REQUESTS_FILE,
    PointRecord,
    RequestRecord,
    latest_points,
    read_requests,
)

IMPORTED_COLUMNS = SUMMARY_COLUMNS + ["source"]
VLLM_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
VLLM_METRICS = (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("itl", "itl_ms"), ("e2el", "e2e_ms"))
"""vLLM's name in `mean_<name>_ms` and the servelab metric it is."""
VLLM_STAT_KEY = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?)_(ttft|tpot|itl|e2el)_ms$")
NS_PER_S = 1e9


# ------------------------------------------------------------------------------------------ export
@dataclass(slots=True)
class VllmOutput:
    """The fields of vLLM's `RequestFuncOutput` for one request, seconds, as vLLM's client would have filled them."""

    success: bool
    start_time: float
    ttft: float
    itl: list[float]
    latency: float
    prompt_len: int
    output_len: int
    """vLLM's `actual_output_lens` entry: a success's token count (1 when unknown, as vLLM without a tokenizer), else 0."""
    queue_time: float
    error: str


def as_vllm_output(record: RequestRecord, arrival_ns: int) -> VllmOutput:
    """One record as vLLM's client output; `arrival_ns` is when vLLM's schedule would have released it."""
    sent = record.actual_send_ns
    ttft = (record.first_token_ns - sent) / NS_PER_S if record.first_token_ns is not None else 0.0
    error = "" if record.ok else ": ".join(str(p) for p in (record.error_class, record.error_message) if p)
    return VllmOutput(
        success=record.ok,
        start_time=sent / NS_PER_S,
        ttft=ttft,
        itl=[(b - a) / NS_PER_S for a, b in pairwise(record.chunk_ns)],
        latency=(record.end_ns - sent) / NS_PER_S if record.ok else 0.0,
        prompt_len=record.prompt_tokens or 0,
        output_len=(output_tokens(record) or 1) if record.ok else 0,
        queue_time=(sent - arrival_ns) / NS_PER_S if sent else 0.0,
        error=error,
    )


def _vllm_stats(name: str, values: list[float]) -> dict[str, float]:
    """vLLM's `process_one_metric`: mean, median, std and percentiles of seconds, in ms; 0 when empty (np.mean(0))."""
    data: Any = values or 0
    stats = {
        f"mean_{name}_ms": float(np.mean(data) * 1000),
        f"median_{name}_ms": float(np.median(data) * 1000),
        f"std_{name}_ms": float(np.std(data) * 1000),
    }
    for p in VLLM_PERCENTILES:
        word = str(int(p)) if int(p) == p else str(p)
        stats[f"p{word}_{name}_ms"] = float(np.percentile(data, p) * 1000)
    return stats


def _peaks(outputs: list[VllmOutput]) -> tuple[float, int]:
    """vLLM's `max_output_tokens_per_s` (chunks per whole-second bucket) and `max_concurrent_requests` (sweep line)."""
    done = [o for o in outputs if o.success]
    if not done:
        return 0.0, 0
    first = min(o.start_time for o in done)
    buckets = np.zeros(int(np.ceil(max(o.start_time + o.latency for o in done) - first)) + 1)
    for output in done:
        times = np.cumsum([output.start_time + output.ttft, *output.itl])
        for bucket in (times - first).astype(int):
            if 0 <= bucket < len(buckets):
                buckets[bucket] += 1
    events = sorted([(o.start_time, 1) for o in done] + [(o.start_time + o.latency, -1) for o in done])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return float(np.max(buckets)), peak


def vllm_bench_result(
    records: list[RequestRecord], point: PointRecord | None, manifest: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One point's measured requests as the dict `vllm bench serve --save-result --save-detailed` writes.

    Computed with vLLM's definitions (`calculate_metrics`): latencies of successful requests, TPOT over requests
    of more than one token, ITLs pooled, throughputs over the point's duration (`metrics.duration_s`).
    `start_times` are CLOCK_MONOTONIC seconds (vLLM's perf_counter is the same clock on Linux). `queue_times` is
    the wait from vLLM's arrival (the intended send time, or the point's start in a closed loop) to the send.
    Texts are not recorded, so `generated_texts` are empty strings.
    """
    measured = sorted((r for r in records if not r.warmup), key=lambda r: r.request_index)
    if not measured:
        raise ServelabError(f"point {point.point_id if point else '?'} has no measured requests to export")
    first = measured[0]
    load_kind = point.load_kind if point else None
    load_value = float(point.load_value) if point else math.nan
    closed_loop = load_kind == "concurrency"
    anchor = min(r.intended_send_ns for r in measured)
    outputs = [as_vllm_output(r, anchor if closed_loop else r.intended_send_ns) for r in measured]
    done = [o for o in outputs if o.success]
    seconds = duration_s(measured)
    total_input = sum(o.prompt_len for o in done)
    total_output = sum(o.output_len for o in outputs)
    load = _load_params(manifest, load_kind)
    sweep = ((manifest or {}).get("params") or {}).get("sweep") or {}
    peak_tokens, peak_requests = _peaks(outputs)

    def per_s(count: float) -> float:
        return count / seconds if seconds > 0 else math.nan

    result: dict[str, Any] = {
        "date": _date(manifest, point.start_ns if point else None),
        "endpoint_type": "openai-chat" if sweep.get("api") == "chat" else "openai",
        "backend": "openai-chat" if sweep.get("api") == "chat" else "openai",
        "label": first.deployment,
        "model_id": first.model,
        "tokenizer_id": None,
        "num_prompts": len(measured),
        "client": "servelab",
        "point_id": first.point_id,
        "deployment": first.deployment,
        "framework": first.framework,
        "language": first.language,
        "load_kind": load_kind,
        "load_value": load_value,
        "interference": bool(point.interference) if point else False,
        "request_rate": "inf" if closed_loop or load_kind is None else load_value,
        "burstiness": "inf" if load_kind == "constant" else float(load.get("burstiness", 1.0)),
        "max_concurrency": int(load_value) if closed_loop else load.get("max_concurrency"),
        "duration": seconds,
        "completed": len(done),
        "failed": len(outputs) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_s(len(done)),
        "request_goodput": None,
        "output_throughput": per_s(total_output),
        "total_token_throughput": per_s(total_input + total_output),
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": [o.output_len for o in outputs],
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "latencies": [o.latency for o in outputs],
        "start_times": [o.start_time for o in outputs],
        "queue_times": [o.queue_time for o in outputs],
        "generated_texts": ["" for _ in outputs],
        "errors": [o.error for o in outputs],
        "max_output_tokens_per_s": peak_tokens,
        "max_concurrent_requests": peak_requests,
        "rtfx": 0.0,
    }
    tpots = [(o.latency - o.ttft) / (o.output_len - 1) for o in done if o.output_len > 1]
    result |= _vllm_stats("ttft", [o.ttft for o in done])
    result |= _vllm_stats("tpot", tpots)
    result |= _vllm_stats("itl", [gap for o in done for gap in o.itl])
    result |= _vllm_stats("e2el", [o.latency for o in done])
    return result


def _load_params(manifest: dict[str, Any] | None, load_kind: str | None) -> dict[str, Any]:
    loads = (((manifest or {}).get("params") or {}).get("sweep") or {}).get("load") or []
    return next((load for load in loads if load.get("kind") == load_kind), {})


def _date(manifest: dict[str, Any] | None, start_ns: int | None) -> str | None:
    """The point's start in vLLM's `%Y%m%d-%H%M%S`, placed in UTC through the manifest's clock anchor."""
    anchor = ((manifest or {}).get("clock") or {}).get("anchor") or {}
    if start_ns is None or "utc" not in anchor or "monotonic_ns" not in anchor:
        return None
    wall = datetime.fromisoformat(anchor["utc"]) + timedelta(
        microseconds=(start_ns - anchor["monotonic_ns"]) / 1000
    )
    return wall.strftime("%Y%m%d-%H%M%S")


def export_vllm_bench(run_dir: Path, out_dir: Path) -> list[Path]:
    """Write each load point of a run as a `vllm bench serve` result JSON in `out_dir`; returns the files written."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    by_point: dict[str, list[RequestRecord]] = {}
    for record in read_requests(run_dir):
        if not record.warmup:
            by_point.setdefault(record.point_id, []).append(record)
    if not by_point:
        raise ServelabError(
            f"{run_dir / REQUESTS_FILE} holds no measured requests; give a servelab run folder (outputs/<run-id>)"
        )
    points = latest_points(run_dir)
    manifest_path = run_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for point_id, records in by_point.items():
        path = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", point_id) + ".json")
        path.write_text(
            json.dumps(vllm_bench_result(records, points.get(point_id), manifest)), encoding="utf-8"
        )
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------ GuideLLM export
GUIDELLM_PERCENTILE_POINTS = {
    "p001": 0.001, "p01": 0.01, "p05": 0.05, "p10": 0.1, "p25": 0.25, "p50": 0.5,
    "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p999": 0.999,
}  # fmt: skip


def guidellm_distribution(values: list[float], weights: list[float] | None = None) -> dict[str, Any]:
    """GuideLLM's `DistributionSummary` of `values` (weighted by `weights` where given), as `from_values` makes it:
    probability-weighted mean and variance, nearest-rank percentiles on the cumulative weights, count = requests."""
    if not values:
        zero = dict.fromkeys(("mean", "median", "mode", "variance", "std_dev", "min", "max"), 0.0)
        return {**zero, "count": 0, "total_sum": 0.0, "percentiles": dict.fromkeys(GUIDELLM_PERCENTILE_POINTS, 0.0), "pdf": None}
    pairs = sorted(zip(values, weights or [1.0] * len(values), strict=True))
    points = np.array([v for v, _ in pairs], dtype=float)
    mass = np.array([w for _, w in pairs], dtype=float)
    probabilities = mass / mass.sum()
    cdf = np.cumsum(probabilities)
    percentiles = {
        name: float(points[min(int(np.searchsorted(cdf, q, side="left")), len(points) - 1)])
        for name, q in GUIDELLM_PERCENTILE_POINTS.items()
    }
    mean = float(np.sum(points * probabilities))
    variance = float(np.sum((points - mean) ** 2 * probabilities))
    return {
        "mean": mean, "median": percentiles["p50"], "mode": float(points[int(np.argmax(probabilities))]),
        "variance": variance, "std_dev": math.sqrt(variance), "min": float(points[0]), "max": float(points[-1]),
        "count": len(values), "total_sum": float(np.sum(points * mass)), "percentiles": percentiles, "pdf": None,
    }  # fmt: skip


def _by_status(records: list[RequestRecord], value: Callable[[RequestRecord], float | None], weight: Callable[[RequestRecord], float] | None = None) -> dict[str, Any]:
    def summary(group: list[RequestRecord]) -> dict[str, Any]:
        kept = [(v, weight(r) if weight else 1.0) for r in group if (v := value(r)) is not None]
        return guidellm_distribution([v for v, _ in kept], [w for _, w in kept] if weight else None)

    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    return {"successful": summary(ok), "incomplete": summary([]), "errored": summary(failed), "total": summary(records)}


def _rate(value: float, count: int) -> dict[str, Any]:
    """A rate as one value: GuideLLM's headline (the mean) is servelab's count / duration; no spread is computed."""
    summary = guidellm_distribution([value])
    summary["count"] = count
    return summary


GUIDELLM_STRATEGIES: dict[str, Callable[[float], dict[str, Any]]] = {
    "concurrency": lambda v: {"type_": "concurrent", "streams": int(v)},
    "constant": lambda v: {"type_": "constant", "rate": v},
    "poisson": lambda v: {"type_": "poisson", "rate": v},
    "gamma": lambda v: {"type_": "gamma", "rate": v},  # GuideLLM has no gamma arrivals; the name is kept
}


def guidellm_benchmark(records: list[RequestRecord], point: PointRecord | None, index: int, epoch_offset_s: float) -> dict[str, Any]:
    """One point's measured requests as a GuideLLM `GenerativeBenchmark`: the distributions of `metrics`, from
    servelab's per-request values with GuideLLM's definitions (ITL = TPOT weighted by its output tokens - 1)."""
    measured = sorted((r for r in records if not r.warmup), key=lambda r: r.request_index)
    seconds = duration_s(measured)
    ok = [r for r in measured if r.ok]
    prompt_total = sum(r.prompt_tokens or 0 for r in ok)
    output_total = sum(output_tokens(r) or 0 for r in ok)
    start = min(r.intended_send_ns for r in measured) / NS_PER_S + epoch_offset_s
    load_kind, load_value = (point.load_kind, float(point.load_value)) if point else ("concurrency", 1.0)

    def per_s(total: float) -> float:
        return total / seconds if seconds > 0 else 0.0

    def ttft(r: RequestRecord) -> float | None:
        return (r.first_token_ns - r.actual_send_ns) / 1e6 if r.first_token_ns is not None else None

    def tpot(r: RequestRecord) -> float | None:
        tokens = output_tokens(r)
        return (r.end_ns - r.first_token_ns) / 1e6 / (tokens - 1) if r.first_token_ns and tokens and tokens > 1 else None

    metrics = {
        "request_totals": {"successful": len(ok), "incomplete": 0, "errored": len(measured) - len(ok), "total": len(measured)},
        "requests_per_second": {"successful": _rate(per_s(len(ok)), len(ok))},
        "output_tokens_per_second": {"successful": _rate(per_s(output_total), output_total)},
        "tokens_per_second": {"successful": _rate(per_s(prompt_total + output_total), prompt_total + output_total)},
        "request_latency": _by_status(measured, lambda r: (r.end_ns - r.actual_send_ns) / NS_PER_S if r.actual_send_ns else None),
        "prompt_token_count": _by_status(measured, lambda r: float(r.prompt_tokens) if r.prompt_tokens is not None else None),
        "output_token_count": _by_status(measured, lambda r: float(t) if (t := output_tokens(r)) is not None else None),
        "time_to_first_token_ms": _by_status(measured, ttft),
        "inter_token_latency_ms": _by_status(measured, tpot, lambda r: float((output_tokens(r) or 1) - 1)),
    }
    return {
        "type_": "generative_benchmark",
        "config": {
            "run_index": index,
            "strategy": GUIDELLM_STRATEGIES[load_kind](load_value),
            "backend": {"type_": "openai_http", "model": measured[0].model},
        },
        "metrics": metrics,
        "requests": {"successful": [], "incomplete": [], "errored": [], "total": None},
        "start_time": start,
        "end_time": start + seconds,
        "duration": seconds,
        "warmup_duration": 0.0,
        "cooldown_duration": 0.0,
    }


def guidellm_report(run_dir: Path) -> dict[str, Any]:
    """A run as the report `guidellm benchmark --output-path x.json` writes (`GenerativeBenchmarksReport`): one
    benchmark per load point; times are epoch seconds through the manifest's clock anchor where there is one."""
    run_dir = Path(run_dir)
    by_point: dict[str, list[RequestRecord]] = {}
    for record in read_requests(run_dir):
        if not record.warmup:
            by_point.setdefault(record.point_id, []).append(record)
    if not by_point:
        raise ServelabError(f"{run_dir / REQUESTS_FILE} holds no measured requests; give a servelab run folder (outputs/<run-id>)")
    points = latest_points(run_dir)
    manifest_path = run_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    anchor = (manifest.get("clock") or {}).get("anchor") or {}
    offset = 0.0
    if "utc" in anchor and "monotonic_ns" in anchor:
        offset = datetime.fromisoformat(anchor["utc"]).timestamp() - anchor["monotonic_ns"] / NS_PER_S
    benchmarks = [
        guidellm_benchmark(records, points.get(point_id), index, offset)
        for index, (point_id, records) in enumerate(by_point.items())
    ]
    models = sorted({records[0].model for records in by_point.values()})
    return {
        "metadata": {"version": 1, "guidellm_version": None, "exported_by": "servelab"},
        "args": {"model": models[0] if len(models) == 1 else None, "profile": "servelab", "data": [run_dir.name]},
        "benchmarks": benchmarks,
    }


def export_guidellm(run_dir: Path, out_path: Path) -> Path:
    """Write a run as one GuideLLM benchmarks report JSON at `out_path`; returns the path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(guidellm_report(run_dir), indent=2), encoding="utf-8")
    return out_path


# ------------------------------------------------------------------------------------------ import
@dataclass(slots=True)
class _Rows:
    """Tidy rows of one imported point."""

    ids: dict[str, Any]
    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, metric: str, unit: str, stats: dict[str, float]) -> None:
        self.rows.extend(
            {**self.ids, "metric": metric, "stat": s, "value": float(v), "unit": unit, "source": self.source}
            for s, v in stats.items()
        )


@dataclass(frozen=True, slots=True)
class ResultsFormat:
    """One other tool's results file: how to recognise its documents and how to read them into points."""

    name: str
    recognises: Callable[[list[Any]], bool]
    """True when the file's documents (one, or one per JSONL line) are this format."""
    read: Callable[[list[Any], Path, dict[str, Any]], list[_Rows]]


def _each(test: Callable[[Any], bool]) -> Callable[[list[Any]], bool]:
    return lambda documents: bool(documents) and all(test(d) for d in documents)


def _one(test: Callable[[Any], bool]) -> Callable[[list[Any]], bool]:
    return lambda documents: len(documents) == 1 and test(documents[0])


def import_results(
    path: Path,
    *,
    deployment: str | None = None,
    framework: str | None = None,
    model: str | None = None,
    language: str | None = None,
) -> pd.DataFrame:
    """Another tool's results file (see RESULTS_FORMATS: `vllm bench serve`, SGLang bench_serving, GuideLLM,
    AIPerf, llmperf) as the tidy summary, plus `source` naming the tool.

    The keyword arguments set those identity columns for every point of the file, over what the file says.
    """
    path = Path(path)
    documents = _read_documents(path)
    overrides = {"deployment": deployment, "framework": framework, "model": model, "language": language}
    found = next((f for f in RESULTS_FORMATS if f.recognises(documents)), None)
    if found is None:
        keys = sorted(documents[0])[:12] if isinstance(documents[0], dict) else type(documents[0]).__name__
        raise ServelabError(
            f"{path}: unknown results format (top level: {keys}). servelab reads a `vllm bench serve --save-result` "
            "JSON (keys duration, completed, request_throughput, mean_ttft_ms, ...), SGLang bench_serving's "
            "--output-file JSONL, a GuideLLM report (`guidellm benchmark --output-path x.json`, with "
            "benchmarks[].metrics), AIPerf's profile_export_aiperf.json, or llmperf's *_summary.json"
        )
    points = found.read(documents, path, overrides)
    _unique_point_ids(points)
    return pd.DataFrame([row for point in points for row in point.rows], columns=IMPORTED_COLUMNS)


def _read_documents(path: Path) -> list[Any]:
    if not path.is_file():
        raise ServelabError(f"{path}: no such file; give a vllm bench serve result JSON or a GuideLLM report")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return [yaml.safe_load(text)]
        return [json.loads(text)]
    except (json.JSONDecodeError, yaml.YAMLError):
        pass
    try:  # `vllm bench serve --append-result`: one JSON object per line
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ServelabError(
            f"{path}: not JSON ({error.msg}, line {error.lineno}); give a result JSON file"
        ) from None


def _is_vllm(document: Any) -> bool:
    return isinstance(document, dict) and {"duration", "completed", "request_throughput"} <= document.keys()


def _is_guidellm(document: Any) -> bool:
    benchmarks = document.get("benchmarks") if isinstance(document, dict) else None
    return (
        isinstance(benchmarks, list)
        and bool(benchmarks)
        and all(isinstance(b, dict) and isinstance(b.get("metrics"), dict) for b in benchmarks)
    )


def _point_id(deployment: Any, language: Any, load_kind: Any, load_value: float) -> str:
    """The same shape as `LoadPoint.point_id`: deployment/language/kind-value (no language part when unknown)."""
    return "/".join(
        str(part) for part in (deployment, language, f"{load_kind}-{load_value:g}") if part is not None
    )


def _unique_point_ids(points: list[_Rows]) -> None:
    seen: dict[str, int] = {}
    for point in points:
        point_id = point.ids["point_id"]
        seen[point_id] = seen.get(point_id, 0) + 1
        if seen[point_id] > 1:
            point.ids["point_id"] = f"{point_id}#{seen[point_id]}"
            for row in point.rows:
                row["point_id"] = point.ids["point_id"]


def _identity(
    path: Path,
    overrides: dict[str, Any],
    found: dict[str, Any],
    load_kind: str,
    load_value: float,
    point_id: Any,
) -> dict[str, Any]:
    ids = {
        key: overrides.get(key) or found.get(key) for key in ("deployment", "framework", "model", "language")
    }
    ids["deployment"] = ids["deployment"] or path.stem
    return {
        "point_id": point_id or _point_id(ids["deployment"], ids["language"], load_kind, load_value),
        **ids,
        "load_kind": load_kind,
        "load_value": load_value,
        "interference": found.get("interference", False),
    }


# ------------------------------------------------------------------------------------------ vLLM
def _vllm_load(doc: dict[str, Any]) -> tuple[str, float]:
    """servelab's load from the metadata, else from request_rate, burstiness and max_concurrency.

    An infinite rate is a closed loop of `max_concurrency` (or of every prompt at once); a finite rate is Poisson
    at burstiness 1, constant at infinite burstiness, else gamma.
    """
    if doc.get("load_kind"):
        return str(doc["load_kind"]), float(doc.get("load_value", math.nan))
    rate = float(doc.get("request_rate", "inf"))
    if math.isinf(rate):
        concurrency = (
            doc.get("max_concurrency") or doc.get("num_prompts") or doc["completed"] + doc.get("failed", 0)
        )
        return "concurrency", float(concurrency)
    burstiness = float(doc.get("burstiness", 1.0))
    return ("poisson" if burstiness == 1.0 else "constant" if math.isinf(burstiness) else "gamma"), rate


def _vllm_point(doc: dict[str, Any], path: Path, overrides: dict[str, Any]) -> _Rows:
    load_kind, load_value = _vllm_load(doc)
    found = {
        "deployment": doc.get("deployment") or doc.get("label"),
        "framework": doc.get("framework"),
        "model": doc.get("model") or doc.get("model_id"),
        "language": doc.get("language"),
        "interference": str(doc.get("interference", False)).lower() == "true",
    }
    point = _Rows(_identity(path, overrides, found, load_kind, load_value, doc.get("point_id")), "vllm-bench")
    completed = int(doc["completed"])
    errors = doc.get("errors")
    failed = doc.get("failed")
    if failed is None:
        failed = (
            sum(1 for e in errors if e)
            if errors is not None
            else max(int(doc.get("num_prompts", completed)) - completed, 0)
        )
    per_request = _vllm_per_request(doc)
    stated = _vllm_stated_stats(doc)
    for name, metric in VLLM_METRICS:
        stats = per_request.get(metric)
        if (
            stats is None
        ):  # no per-request lists: every success has a TTFT and an E2EL, the other counts are unknown
            stats = {"count": float(completed)} if completed == 0 or name in ("ttft", "e2el") else {}
        if stats.get("count", 1) > 0:  # vLLM writes 0 for the stats of an empty list; those are not kept
            stats = _ordered(stats | stated.get(name, {}))
        if stats:
            point.add(metric, "ms", stats)
    for metric in ("prompt_tokens", "output_tokens"):
        if metric in per_request:
            point.add(metric, "tokens", per_request[metric])
    scalars = _bench_scalars(doc, completed, int(failed), doc.get("total_token_throughput", math.nan))
    if doc.get("request_goodput") is not None:
        scalars["goodput_req_s"] = (doc["request_goodput"], "req/s")
    for metric, (value, unit) in scalars.items():
        point.add(metric, unit, {"value": float(value)})
    return point


def _vllm_stated_stats(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The stats the file states: mean/median/std/pN of ttft, tpot, itl, e2el (median is p50)."""
    stated: dict[str, dict[str, float]] = {}
    for key, value in doc.items():
        match = VLLM_STAT_KEY.match(key)
        if match and value is not None:
            stat = {"median": "p50"}.get(match[1], match[1])
            stated.setdefault(match[2], {})[stat] = float(value)
    return stated


def _vllm_per_request(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Full distributions (count, min, max and every percentile) from the `--save-detailed` lists, where present."""
    latencies, ttfts = doc.get("latencies"), doc.get("ttfts")
    errors = doc.get("errors")
    if errors is not None:
        ok = [not e for e in errors]
    elif latencies is not None:
        ok = [bool(latency) for latency in latencies]
    else:
        return {}

    def successful(values: list[Any] | None) -> list[Any] | None:
        return (
            None
            if values is None or len(values) != len(ok)
            else [v for v, good in zip(values, ok, strict=True) if good]
        )

    found: dict[str, Iterable[float]] = {}
    ok_ttfts, ok_latencies = successful(ttfts), successful(latencies)
    ok_itls, ok_inputs, ok_outputs = (
        successful(doc.get("itls")),
        successful(doc.get("input_lens")),
        successful(doc.get("output_lens")),
    )
    if ok_ttfts is not None:
        found["ttft_ms"] = [t * 1000 for t in ok_ttfts]
    if ok_latencies is not None:
        found["e2e_ms"] = [t * 1000 for t in ok_latencies]
    if ok_itls is not None:
        found["itl_ms"] = [gap * 1000 for gaps in ok_itls for gap in gaps]
    if ok_ttfts is not None and ok_latencies is not None and ok_outputs is not None:
        found["tpot_ms"] = [
            (latency - ttft) / (n - 1) * 1000
            for latency, ttft, n in zip(ok_latencies, ok_ttfts, ok_outputs, strict=True)
            if n > 1
        ]
    if ok_inputs is not None:
        found["prompt_tokens"] = ok_inputs
    if ok_outputs is not None:
        found["output_tokens"] = ok_outputs
    return {metric: distribution(list(values)) for metric, values in found.items()}


def _ordered(stats: dict[str, float]) -> dict[str, float]:
    """servelab's stat order first (count, mean, std, min, p50 ... max), then any other percentile."""
    known = [s for s in DISTRIBUTION_STATS if s in stats]
    return {s: stats[s] for s in known + sorted(set(stats) - set(known))}


# ------------------------------------------------------------------------------------------ GuideLLM
GUIDELLM_DISTRIBUTIONS = (
    ("time_to_first_token_ms", "ttft_ms", "ms", 1.0, False),
    ("inter_token_latency_ms", "tpot_ms", "ms", 1.0, True),
    ("request_latency", "e2e_ms", "ms", 1000.0, False),
    ("prompt_token_count", "prompt_tokens", "tokens", 1.0, False),
    ("output_token_count", "output_tokens", "tokens", 1.0, False),
)
"""(GuideLLM metric, servelab metric, unit, scale to the unit, weighted by tokens so `count` is not requests)."""
GUIDELLM_RATES = (
    ("requests_per_second", "req_s", "req/s"),
    ("output_tokens_per_second", "output_tok_s", "tok/s"),
    ("tokens_per_second", "total_tok_s", "tok/s"),
)
"""A rate distribution's time-weighted mean is events / time span: GuideLLM's headline throughput."""
GUIDELLM_PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99"), ("p99.9", "p999"))


def _guidellm_load(strategy: dict[str, Any]) -> tuple[str, float]:
    """synchronous is a closed loop of 1, concurrent of `streams`; constant and poisson keep their rate."""
    kind = strategy.get("type_", "unknown")
    if kind == "synchronous":
        return "concurrency", 1.0
    if kind == "concurrent":
        return "concurrency", float(strategy["streams"])
    if kind == "throughput":
        return "throughput", float(strategy.get("max_concurrency") or math.nan)
    return str(kind), float(strategy.get("rate") or math.nan)


def _guidellm_stats(summary: dict[str, Any], scale: float, weighted: bool) -> dict[str, float]:
    stats = {} if weighted else {"count": float(summary["count"])}
    if summary["count"] == 0:
        return stats
    percentiles = summary.get("percentiles") or {}
    stats |= {
        "mean": summary["mean"] * scale,
        "std": summary["std_dev"] * scale,
        "min": summary["min"] * scale,
    }
    stats |= {
        ours: percentiles[theirs] * scale for ours, theirs in GUIDELLM_PERCENTILES if theirs in percentiles
    }
    stats["max"] = summary["max"] * scale
    return stats


def _guidellm_points(report: dict[str, Any], path: Path, overrides: dict[str, Any]) -> list[_Rows]:
    args = report.get("args") or {}
    points = []
    for benchmark in report["benchmarks"]:
        config = benchmark.get("config") or benchmark.get("args") or {}
        load_kind, load_value = _guidellm_load(config.get("strategy") or {})
        found = {"model": args.get("model") or (config.get("backend") or {}).get("model")}
        point = _Rows(_identity(path, overrides, found, load_kind, load_value, None), "guidellm")
        metrics = benchmark["metrics"]
        for theirs, ours, unit, scale, weighted in GUIDELLM_DISTRIBUTIONS:
            summary = (metrics.get(theirs) or {}).get("successful")
            if summary:
                point.add(ours, unit, _guidellm_stats(summary, scale, weighted))
        totals = metrics.get("request_totals") or benchmark.get("request_totals") or {}
        successful, errored = int(totals.get("successful", 0)), int(totals.get("errored", 0))
        duration = benchmark.get("duration")
        if duration is None and "end_time" in benchmark and "start_time" in benchmark:
            duration = benchmark["end_time"] - benchmark["start_time"]
        scalars = {
            "requests": (successful + errored, "count"),
            "errors": (errored, "count"),
            "success_rate": (
                successful / (successful + errored) if successful + errored else math.nan,
                "fraction",
            ),
            "duration_s": (duration if duration is not None else math.nan, "s"),
        }
        for theirs, ours, unit in GUIDELLM_RATES:
            summary = (metrics.get(theirs) or {}).get("successful")
            if summary:
                scalars[ours] = (summary["mean"], unit)
        for metric, (value, unit) in scalars.items():
            point.add(metric, unit, {"value": float(value)})
        points.append(point)
    return points


# ------------------------------------------------------------------------------------------ SGLang
SGLANG_METRICS = (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("itl", "itl_ms"), ("e2e_latency", "e2e_ms"))
"""SGLang's name in `mean_<name>_ms` and the servelab metric it is."""
SGLANG_STAT_KEY = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?|max)_(ttft|tpot|itl|e2e_latency)_ms$")


def _is_sglang(document: Any) -> bool:
    """SGLang's bench_serving result: vLLM-like keys, but E2E as `mean_e2e_latency_ms` and throughput per phase."""
    return (
        isinstance(document, dict)
        and {"duration", "completed", "request_throughput", "mean_e2e_latency_ms", "input_throughput"} <= document.keys()
    )


def _sglang_load(doc: dict[str, Any]) -> tuple[str, float]:
    """An infinite (or absent) request_rate is a closed loop of max_concurrency (or of every request at once); a
    finite one is Poisson, SGLang's only arrival process (`get_request`), capped at max_concurrency if set."""
    rate = float(doc.get("request_rate") if doc.get("request_rate") is not None else math.inf)
    if math.isinf(rate):
        return "concurrency", float(doc.get("max_concurrency") or doc["completed"] + _sglang_failed(doc))
    return "poisson", rate


def _sglang_failed(doc: dict[str, Any]) -> int:
    errors = doc.get("errors")
    return sum(1 for e in errors if e) if isinstance(errors, list) else 0


def _sglang_point(doc: dict[str, Any], path: Path, overrides: dict[str, Any]) -> _Rows:
    """One line of `python -m sglang.bench_serving --output-file x.jsonl [--output-details]`.

    Without --output-details the failures are unknown (SGLang writes only `completed`), so `errors` is 0 and
    `requests` is `completed`. Its per-request lists hold no latencies, so E2E has only the stated stats.
    """
    load_kind, load_value = _sglang_load(doc)
    found = {
        "deployment": doc.get("deployment") or doc.get("tag"),
        "framework": doc.get("framework"),
        "model": doc.get("model") or doc.get("model_id"),
        "language": doc.get("language"),
    }
    point = _Rows(_identity(path, overrides, found, load_kind, load_value, None), "sglang-bench-serving")
    completed = int(doc["completed"])
    failed = _sglang_failed(doc)
    errors = doc.get("errors")
    ok = [not e for e in errors] if isinstance(errors, list) else None
    per_request: dict[str, dict[str, float]] = {}
    if ok is not None:
        def successful(key: str) -> list[Any] | None:
            values = doc.get(key)
            return [v for v, good in zip(values, ok, strict=True) if good] if isinstance(values, list) and len(values) == len(ok) else None

        ttfts, itls, inputs, outputs = successful("ttfts"), successful("itls"), successful("input_lens"), successful("output_lens")
        if ttfts is not None:
            per_request["ttft_ms"] = distribution([t * 1000 for t in ttfts])
        if itls is not None:
            per_request["itl_ms"] = distribution([g * 1000 for gaps in itls for g in gaps])
        if inputs is not None:
            per_request["prompt_tokens"] = distribution(inputs)
        if outputs is not None:
            per_request["output_tokens"] = distribution(outputs)
    stated: dict[str, dict[str, float]] = {}
    for key, value in doc.items():
        match = SGLANG_STAT_KEY.match(key)
        if match and value is not None:
            stated.setdefault(match[2], {})[{"median": "p50"}.get(match[1], match[1])] = float(value)
    for name, metric in SGLANG_METRICS:
        stats = per_request.get(metric) or ({"count": float(completed)} if name in ("ttft", "e2e_latency") else {})
        if completed:
            stats = _ordered(stats | stated.get(name, {}))
        if stats:
            point.add(metric, "ms", stats)
    for metric in ("prompt_tokens", "output_tokens"):
        if metric in per_request:
            point.add(metric, "tokens", per_request[metric])
    total = doc.get("total_throughput")
    if total is None:  # not in the result dict; SGLang prints (input + output tokens) / duration
        total = float(doc["input_throughput"]) + float(doc.get("output_throughput", math.nan))
    scalars = _bench_scalars(doc, completed, failed, total)
    for metric, (value, unit) in scalars.items():
        point.add(metric, unit, {"value": float(value)})
    return point


def _bench_scalars(doc: dict[str, Any], completed: int, failed: int, total_tok_s: float) -> dict[str, tuple[float, str]]:
    """The point-level figures vLLM's and SGLang's bench_serving both write (their total tok/s differs by name)."""
    requests = completed + failed
    return {
        "requests": (requests, "count"),
        "errors": (failed, "count"),
        "success_rate": (completed / requests if requests else math.nan, "fraction"),
        "duration_s": (doc["duration"], "s"),
        "req_s": (doc["request_throughput"], "req/s"),
        "output_tok_s": (doc.get("output_throughput", math.nan), "tok/s"),
        "total_tok_s": (total_tok_s, "tok/s"),
    }


# ------------------------------------------------------------------------------------------ AIPerf
AIPERF_DISTRIBUTIONS = (
    ("time_to_first_token", "ttft_ms"),
    ("inter_token_latency", "tpot_ms"),
    ("inter_chunk_latency", "itl_ms"),
    ("request_latency", "e2e_ms"),
    ("input_sequence_length", "prompt_tokens"),
    ("output_sequence_length", "output_tokens"),
)
"""AIPerf's metric tag and the servelab metric it is. AIPerf's inter_token_latency is (latency - TTFT) / (OSL - 1),
servelab's TPOT; its inter_chunk_latency is the gaps between chunks, servelab's ITL."""
AIPERF_RATES = (
    ("request_throughput", "req_s", "req/s"),
    ("output_token_throughput", "output_tok_s", "tok/s"),
    ("total_token_throughput", "total_tok_s", "tok/s"),
    ("goodput", "goodput_req_s", "req/s"),
)
AIPERF_STATS = {"avg": "mean", "std": "std", "min": "min", "max": "max"}
TO_MS = {"ms": 1.0, "s": 1000.0, "sec": 1000.0, "us": 1e-3, "ns": 1e-6}


def _aiperf_metric(document: dict[str, Any], tag: str) -> dict[str, Any] | None:
    value = document.get(tag)
    return value if isinstance(value, dict) and "unit" in value and "avg" in value else None


def _is_aiperf(document: Any) -> bool:
    """`profile_export_aiperf.json`: metric tags at the top level, each {unit, avg, min, max, pN, std}."""
    return isinstance(document, dict) and _aiperf_metric(document, "request_throughput") is not None


def _aiperf_load(config: dict[str, Any]) -> tuple[str, float]:
    """A request_rate is open loop (constant or poisson, as AIPerf's request_rate_mode says); else concurrency."""
    loadgen = config.get("loadgen") or {}
    if loadgen.get("request_rate"):
        mode = str(loadgen.get("request_rate_mode") or "poisson").lower()
        return ("constant" if mode == "constant" else "poisson"), float(loadgen["request_rate"])
    return "concurrency", float(loadgen.get("concurrency") or 1)


def _aiperf_point(doc: dict[str, Any], path: Path, overrides: dict[str, Any]) -> _Rows:
    """AIPerf's aggregate export (`aiperf profile`, artifacts/<run>/profile_export_aiperf.json); units as stated."""
    config = doc.get("input_config") or {}
    load_kind, load_value = _aiperf_load(config)
    models = (config.get("endpoint") or {}).get("model_names") or [None]
    point = _Rows(_identity(path, overrides, {"model": models[0]}, load_kind, load_value, None), "aiperf")
    for tag, metric in AIPERF_DISTRIBUTIONS:
        found = _aiperf_metric(doc, tag)
        if found is None:
            continue
        unit = "tokens" if metric.endswith("tokens") else "ms"
        scale = 1.0 if unit == "tokens" else TO_MS.get(str(found["unit"]), 1.0)
        stats = {ours: float(found[theirs]) * scale for theirs, ours in AIPERF_STATS.items() if found.get(theirs) is not None}
        stats |= {k: float(v) * scale for k, v in found.items() if re.fullmatch(r"p\d+(\.\d+)?", k) and v is not None}
        point.add(metric, unit, _ordered(stats))
    good = _aiperf_metric(doc, "request_count")
    bad = _aiperf_metric(doc, "error_request_count")
    completed, failed = (float(good["avg"]) if good else math.nan), (float(bad["avg"]) if bad else 0.0)
    duration = _aiperf_metric(doc, "benchmark_duration")
    scalars = {
        "requests": (completed + failed, "count"),
        "errors": (failed, "count"),
        "success_rate": (completed / (completed + failed) if completed + failed else math.nan, "fraction"),
        "duration_s": (float(duration["avg"]) * TO_MS.get(str(duration["unit"]), 1000.0) / 1000 if duration else math.nan, "s"),
    }
    for tag, metric, unit in AIPERF_RATES:
        found = _aiperf_metric(doc, tag)
        if found is not None:
            scalars[metric] = (float(found["avg"]), unit)
    for metric, (value, unit) in scalars.items():
        point.add(metric, unit, {"value": float(value)})
    return point


# ------------------------------------------------------------------------------------------ llmperf
LLMPERF_DISTRIBUTIONS = (
    ("ttft_s", "ttft_ms", "ms", 1000.0),
    ("end_to_end_latency_s", "e2e_ms", "ms", 1000.0),
    ("inter_token_latency_s", "llmperf_inter_token_latency_ms", "ms", 1000.0),
    ("number_input_tokens", "prompt_tokens", "tokens", 1.0),
    ("number_output_tokens", "output_tokens", "tokens", 1.0),
)
"""llmperf's metric, the servelab metric and unit, and the scale. llmperf's inter_token_latency_s is the sum of a
request's chunk gaps with TTFT included, over its output tokens: neither servelab's TPOT nor its ITL, so it keeps
its own name."""


def _is_llmperf(document: Any) -> bool:
    """`token_benchmark_ray.py --results-dir`'s *_summary.json: LLMPerfResults flattened with `_` separators."""
    return isinstance(document, dict) and "results_ttft_s_mean" in document and "num_concurrent_requests" in document


def _number(value: Any) -> float:
    """llmperf writes numpy integers through json's default=str, so some numbers arrive as strings."""
    return float(value) if value is not None else math.nan


def _llmperf_point(doc: dict[str, Any], path: Path, overrides: dict[str, Any]) -> _Rows:
    load_value = _number(doc["num_concurrent_requests"])
    point = _Rows(_identity(path, overrides, {"model": doc.get("model")}, "concurrency", load_value, None), "llmperf")
    completed = _number(doc.get("results_num_completed_requests"))
    for theirs, ours, unit, scale in LLMPERF_DISTRIBUTIONS:
        key = f"results_{theirs}"
        if f"{key}_mean" not in doc:
            continue
        stats = {"count": completed, "mean": _number(doc[f"{key}_mean"]) * scale}
        # pandas' Series.std: the sample standard deviation (ddof=1), where servelab's is the population's.
        stats["std"] = _number(doc.get(f"{key}_stddev")) * scale
        stats["min"] = _number(doc.get(f"{key}_min")) * scale
        for name, value in doc.items():
            match = re.fullmatch(rf"{key}_quantiles_(p\d+)", name)
            if match:
                stats[match[1]] = _number(value) * scale
        stats["max"] = _number(doc.get(f"{key}_max")) * scale
        point.add(ours, unit, _ordered(stats))
    started = _number(doc.get("results_num_requests_started"))
    per_minute = _number(doc.get("results_num_completed_requests_per_min"))
    scalars = {
        "requests": (started, "count"),
        "errors": (_number(doc.get("results_number_errors", 0)), "count"),
        "success_rate": (1.0 - _number(doc.get("results_error_rate", 0)), "fraction"),
        "duration_s": (completed * 60.0 / per_minute if per_minute else math.nan, "s"),
        "req_s": (per_minute / 60.0, "req/s"),
        "output_tok_s": (_number(doc.get("results_mean_output_throughput_token_per_s")), "tok/s"),
    }
    for metric, (value, unit) in scalars.items():
        point.add(metric, unit, {"value": float(value)})
    return point


RESULTS_FORMATS: tuple[ResultsFormat, ...] = (
    # SGLang's keys are a superset of vLLM's test, so it is tried first.
    ResultsFormat("sglang-bench-serving", _each(_is_sglang), lambda d, p, o: [_sglang_point(x, p, o) for x in d]),
    ResultsFormat("vllm-bench", _each(_is_vllm), lambda d, p, o: [_vllm_point(x, p, o) for x in d]),
    ResultsFormat("guidellm", _one(_is_guidellm), lambda d, p, o: _guidellm_points(d[0], p, o)),
    ResultsFormat("aiperf", _one(_is_aiperf), lambda d, p, o: [_aiperf_point(d[0], p, o)]),
    ResultsFormat("llmperf", _one(_is_llmperf), lambda d, p, o: [_llmperf_point(d[0], p, o)]),
)
"""The formats import_results reads, in the order they are tried."""

