"""Writes the hand-built sample files of this folder (see README.md). They are NOT recorded from real runs.

Neither tool can be installed here, so each sample is built from synthetic per-request timings with the tool's
own formulas. The formulas are restated from upstream source, independently of `servelab.checks.interop`:
- `vllm_bench_serve_sample.json`: `calculate_metrics`, `benchmark` and `main_async` of vllm/benchmarks/serve.py,
  for `vllm bench serve --backend openai --dataset-name random --random-input-len 64 --random-output-len 16
  --num-prompts 8 --max-concurrency 4 --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99
  --save-result --save-detailed --metadata deployment=smollm2-vllm framework=vllm language=en`.
- `guidellm_report_sample.json`: `GenerativeBenchmarksReport` (guidellm/benchmark/schemas/generative/),
  `GenerativeMetrics.compile`, `GenerativeRequestStats` and `DistributionSummary` (guidellm/schemas/), for
  `guidellm benchmark --profile concurrent --rate 1,2 --max-requests 8 --sample-requests 0`.

Run from the repository root: `.venv/bin/python tests/data/interop/make_samples.py`.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def synthetic_requests(seed: int, count: int, streams: int, fail: int | None) -> list[dict]:
    """Closed-loop requests on `streams` workers: start, first token, evenly jittered chunks, end (seconds)."""
    rng = random.Random(seed)
    free = [1000.0 + 0.002 * k for k in range(streams)]
    requests = []
    for index in range(count):
        worker = min(range(streams), key=lambda k: free[k])
        start = free[worker] + rng.uniform(0.0002, 0.0006)
        first = start + rng.uniform(0.025, 0.060) * (1 + 0.3 * (streams - 1))
        chunks = [first]
        for _ in range(15):
            chunks.append(chunks[-1] + rng.uniform(0.014, 0.022) * (1 + 0.2 * (streams - 1)))
        failed = index == fail
        end = chunks[-1] + rng.uniform(0.0003, 0.0012)
        if failed:
            chunks, end = chunks[:6], chunks[5] + 0.0004
        free[worker] = end
        requests.append(
            {"start": start, "chunks": chunks, "end": end, "prompt": 64, "output": 16, "failed": failed}
        )
    return requests


# ------------------------------------------------------------------------------------------ vLLM
def vllm_sample() -> dict:
    requests = synthetic_requests(seed=6, count=8, streams=4, fail=5)
    benchmark_start = requests[0]["start"] - 0.0004
    duration = max(r["end"] for r in requests) + 0.0008 - benchmark_start
    outputs = []
    for r in requests:
        ok = not r["failed"]
        outputs.append(
            {
                "success": ok,
                "ttft": r["chunks"][0] - r["start"],
                "itl": [b - a for a, b in zip(r["chunks"], r["chunks"][1:], strict=False)],
                "latency": r["end"] - r["start"] if ok else 0.0,
                "start_time": r["start"],
                "client_queue_time": r["start"] - benchmark_start,
                "prompt_len": r["prompt"],
                "output_tokens": r["output"] if ok else 0,
                "error": ""
                if ok
                else "Traceback (most recent call last):\n  ...\naiohttp.client_exceptions.ClientPayloadError: "
                "Response payload is not completed\n",
            }
        )
    done = [o for o in outputs if o["success"]]
    lens = [o["output_tokens"] if o["success"] else 0 for o in outputs]
    total_input = sum(o["prompt_len"] for o in done)
    ttfts = [o["ttft"] for o in done]
    tpots = [(o["latency"] - o["ttft"]) / (o["output_tokens"] - 1) for o in done if o["output_tokens"] > 1]
    itls = [gap for o in done for gap in o["itl"]]
    e2els = [o["latency"] for o in done]
    first = min(o["start_time"] for o in done)
    buckets = np.zeros(int(np.ceil(max(o["start_time"] + o["latency"] for o in done) - first)) + 1)
    for o in done:
        now = o["start_time"] + o["ttft"]
        times = [now]
        for gap in o["itl"]:
            now += gap
            times.append(now)
        for t in times:
            if 0 <= int(t - first) < len(buckets):
                buckets[int(t - first)] += 1
    events = sorted(
        [(o["start_time"], 1) for o in done] + [(o["start_time"] + o["latency"], -1) for o in done]
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    result = {
        "date": "20250611-142233",
        "endpoint_type": "openai",
        "backend": "openai",
        "label": None,
        "model_id": MODEL,
        "tokenizer_id": MODEL,
        "num_prompts": 8,
        "deployment": "smollm2-vllm",
        "framework": "vllm",
        "language": "en",
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": 4,
        "duration": duration,
        "completed": len(done),
        "failed": len(outputs) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": sum(lens),
        "request_throughput": len(done) / duration,
        "request_goodput": None,
        "output_throughput": sum(lens) / duration,
        "total_token_throughput": (total_input + sum(lens)) / duration,
        "input_lens": [o["prompt_len"] for o in outputs],
        "output_lens": lens,
        "ttfts": [o["ttft"] for o in outputs],
        "itls": [o["itl"] for o in outputs],
        "latencies": [o["latency"] for o in outputs],
        "start_times": [o["start_time"] for o in outputs],
        "queue_times": [o["client_queue_time"] for o in outputs],
        "generated_texts": [
            " the quick brown fox jumps over the lazy dog again and" if o["success"] else "" for o in outputs
        ],
        "errors": [o["error"] for o in outputs],
        "max_output_tokens_per_s": float(np.max(buckets)),
        "max_concurrent_requests": peak,
        "rtfx": 0.0,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        result[f"mean_{name}_ms"] = float(np.mean(values or 0) * 1000)
        result[f"median_{name}_ms"] = float(np.median(values or 0) * 1000)
        result[f"std_{name}_ms"] = float(np.std(values or 0) * 1000)
        for p in (50.0, 90.0, 99.0):
            result[f"p{int(p)}_{name}_ms"] = float(np.percentile(values or 0, p) * 1000)
    return result


# ------------------------------------------------------------------------------------------ GuideLLM
PERCENTILES = {
    "p001": 0.001,
    "p01": 0.01,
    "p05": 0.05,
    "p10": 0.1,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p90": 0.9,
    "p95": 0.95,
    "p99": 0.99,
    "p999": 0.999,
}


def summary_from_pdf(values: np.ndarray, probabilities: np.ndarray, count: int) -> dict:
    """`DistributionSummary.from_pdf`: nearest-rank percentiles on the cumulative probabilities."""
    if len(values) == 0:
        zero = dict.fromkeys(("mean", "median", "mode", "variance", "std_dev", "min", "max"), 0.0)
        return {
            **zero,
            "count": count,
            "total_sum": 0.0,
            "percentiles": dict.fromkeys(PERCENTILES, 0.0),
            "pdf": None,
        }
    cdf = np.cumsum(probabilities)
    percentiles = {
        k: float(values[min(np.searchsorted(cdf, q, side="left"), len(values) - 1)])
        for k, q in PERCENTILES.items()
    }
    mean = float(np.sum(values * probabilities))
    variance = float(np.sum((values - mean) ** 2 * probabilities))
    return {
        "mean": mean,
        "median": percentiles["p50"],
        "mode": float(values[np.argmax(probabilities)]),
        "variance": variance,
        "std_dev": math.sqrt(variance),
        "min": float(values[0]),
        "max": float(values[-1]),
        "count": count,
        "total_sum": mean * count,
        "percentiles": percentiles,
        "pdf": None,
    }


def from_values(values: list, count: int | None = None) -> dict:
    """`DistributionSummary.from_values`: values or (value, weight) pairs, duplicates merged, zero weights dropped."""
    pairs = np.array([v if isinstance(v, tuple) else (v, 1.0) for v in values], dtype=float).reshape(-1, 2)
    if len(pairs) == 0:
        return summary_from_pdf(np.empty(0), np.empty(0), 0)
    count = round(float(np.sum(pairs[:, 1]))) if count is None else count
    unique, inverse = np.unique(pairs[:, 0], return_inverse=True)
    weights = np.zeros_like(unique)
    np.add.at(weights, inverse, pairs[:, 1])
    keep = weights > 0
    unique, weights = unique[keep], weights[keep]
    return summary_from_pdf(unique, weights / weights.sum(), count)


def rate_distribution(
    events: list[tuple[float, float]], start: float | None = None, end: float | None = None
) -> dict:
    """`DistributionSummary.rate_distribution_from_timings`: events / local duration, weighted by that duration."""
    times = sorted(events)
    if start is not None:
        times = [(start, 0.0)] + [e for e in times if e[0] >= start]
    if end is not None:
        times = [e for e in times if e[0] <= end] + [(end, 0.0)]
    merged: dict[float, float] = {}
    for t, w in times:
        merged[t] = merged.get(t, 0.0) + w
    array = np.array(sorted(merged.items()), dtype=float).reshape(-1, 2)
    if len(array) <= 1:
        return from_values([], count=len(array))
    t, occurrences = array[:, 0], array[:, 1]
    mid = (t[1:] + t[:-1]) / 2
    durations = np.empty_like(t)
    durations[0] = mid[0] - t[0]
    durations[1:-1] = mid[1:] - mid[:-1]
    durations[-1] = max(t[-1] - mid[-1], 1e-6)
    return from_values(
        list(zip(occurrences / durations, durations, strict=True)), count=round(float(occurrences.sum()))
    )


def concurrency_distribution(intervals: list[tuple[float, float]], start: float, end: float) -> dict:
    """`DistributionSummary.concurrency_distribution_from_timings`: requests in flight, weighted by time."""
    changes = sorted([(a, 1.0) for a, _ in intervals] + [(b, -1.0) for _, b in intervals])
    changes = (
        [(start, sum(w for t, w in changes if t < start))]
        + [c for c in changes if start <= c[0] <= end]
        + [(end, 0.0)]
    )
    levels = np.clip(np.cumsum([w for _, w in changes]), 0, None)
    durations = np.clip(np.diff([t for t, _ in changes]), 0, None)
    return from_values(list(zip(levels[:-1], durations, strict=True)), count=len(intervals))


def by_status(successful: list, errored: list, make) -> dict:
    return {
        "successful": make(successful),
        "incomplete": make([]),
        "errored": make(errored),
        "total": make(successful + errored),
    }


def guidellm_benchmark(streams: int, run_index: int, requests: list[dict]) -> dict:
    stats = []
    for r in requests:
        tokens = len(r["chunks"]) if r["failed"] else r["output"]
        first, last, iterations = r["chunks"][0], r["chunks"][-1], len(r["chunks"])
        per_iteration = (tokens - 1) / (iterations - 1)
        iter_times = list(np.linspace(first, last, num=iterations)[1:])
        stats.append(
            {
                "start": r["start"],
                "end": r["end"],
                "failed": r["failed"],
                "prompt": r["prompt"],
                "output": tokens,
                "ttft_ms": 1000 * (first - r["start"]),
                "tpot_ms": 1000 * (last - r["start"]) / tokens,
                "itl_ms": 1000 * (last - first) / (tokens - 1),
                "latency": r["end"] - r["start"],
                "iterations": iterations,
                "output_timings": [(first, 1.0)] + [(t, per_iteration) for t in iter_times],
                "iter_timings": [(t, per_iteration) for t in iter_times],
                "first": first,
            }
        )
    ok = [s for s in stats if not s["failed"]]
    bad = [s for s in stats if s["failed"]]
    measure_start, measure_end = stats[0]["start"] - 0.0005, max(s["end"] for s in stats) + 0.0003

    def values(function):
        return lambda group: from_values([function(s) for s in group])

    def rates(function, window: bool = False):
        return lambda group: rate_distribution(
            [e for s in group for e in function(s)],
            *((measure_start, measure_end) if window else (None, None)),
        )

    metrics = {
        "request_totals": {"successful": len(ok), "incomplete": 0, "errored": len(bad), "total": len(stats)},
        "requests_per_second": by_status(ok, bad, rates(lambda s: [(s["end"], 1.0)], window=True)),
        "request_concurrency": by_status(
            ok,
            bad,
            lambda g: concurrency_distribution(
                [(s["start"], s["end"]) for s in g], measure_start, measure_end
            ),
        ),
        "request_latency": by_status(ok, bad, values(lambda s: s["latency"])),
        "request_streaming_iterations_count": by_status(ok, bad, values(lambda s: float(s["iterations"]))),
        "prompt_token_count": by_status(ok, bad, values(lambda s: float(s["prompt"]))),
        "output_token_count": by_status(ok, bad, values(lambda s: float(s["output"]))),
        "total_token_count": by_status(ok, bad, values(lambda s: float(s["prompt"] + s["output"]))),
        "time_to_first_token_ms": by_status(ok, bad, values(lambda s: s["ttft_ms"])),
        "time_to_first_output_token_ms": by_status(ok, bad, values(lambda s: s["ttft_ms"])),
        "time_per_output_token_ms": by_status(ok, bad, values(lambda s: (s["tpot_ms"], float(s["output"])))),
        "inter_token_latency_ms": by_status(ok, bad, values(lambda s: (s["itl_ms"], float(s["output"] - 1)))),
        "prompt_tokens_per_second": by_status(ok, bad, rates(lambda s: [(s["first"], float(s["prompt"]))])),
        "output_tokens_per_second": by_status(ok, bad, rates(lambda s: s["output_timings"])),
        "tokens_per_second": by_status(
            ok, bad, rates(lambda s: [(s["first"], float(s["prompt"]))] + s["output_timings"])
        ),
        "output_tokens_per_iteration": by_status(
            ok, bad, lambda g: from_values([w for s in g for _, w in s["output_timings"]])
        ),
        "iter_tokens_per_iteration": by_status(
            ok, bad, lambda g: from_values([w for s in g for _, w in s["iter_timings"]])
        ),
        "text": {"tokens": None, "words": None, "characters": None},
        "image": {"tokens": None, "images": None, "pixels": None, "bytes": None},
        "video": {"tokens": None, "frames": None, "seconds": None, "bytes": None},
        "audio": {"tokens": None, "samples": None, "seconds": None, "bytes": None},
        "tool_call": {"tokens": None, "mixed_tokens": None, "count": None},
    }
    run_start = measure_start - 0.35
    return {
        "type_": "generative_benchmark",
        "config": {
            "id_": f"4b1e8f0c-7d3a-4c55-9a0e-1f2b3c4d5e6{run_index}",
            "run_id": "0d9c2a71-58e4-4f7b-b6a3-2e1f0c9d8b7a",
            "run_index": run_index,
            "strategy": {"type_": "concurrent", "streams": streams, "startup_duration": 0.0},
            "constraints": {
                "max_requests": {"type_": "max_number", "max_num": 8, "current_index": run_index}
            },
            "sample_requests": 0,
            "warmup": {"percent": None, "value": None, "mode": "prefer_duration"},
            "cooldown": {"percent": None, "value": None, "mode": "prefer_duration"},
            "prefer_response_metrics": True,
            "profile": {"type_": "concurrent", "streams": [1, 2], "startup_duration": 0.0},
            "requests": {"data": ["prompt_tokens=64,output_tokens=16"], "data_args": [], "data_samples": -1},
            "backend": {"type_": "openai_http", "target": "http://127.0.0.1:8000", "model": MODEL},
            "environment": {"type_": "non_distributed", "workers": streams},
        },
        "scheduler_state": {
            "node_id": 0,
            "num_processes": streams,
            "start_time": run_start,
            "end_time": measure_end + 0.02,
            "created_requests": len(stats),
            "queued_requests": 0,
            "pending_requests": 0,
            "processing_requests": 0,
            "processed_requests": len(stats),
            "successful_requests": len(ok),
            "errored_requests": len(bad),
            "cancelled_requests": 0,
        },
        "scheduler_metrics": {
            "start_time": run_start,
            "request_start_time": stats[0]["start"],
            "measure_start_time": measure_start,
            "measure_end_time": measure_end,
            "request_end_time": max(s["end"] for s in stats),
            "end_time": measure_end + 0.02,
            "requests_made": {
                "successful": len(ok),
                "incomplete": 0,
                "errored": len(bad),
                "total": len(stats),
            },
            "queued_time_avg": 0.00041,
            "resolve_start_delay_avg": 0.00012,
            "resolve_targeted_start_delay_avg": 0.00031,
            "request_start_delay_avg": 0.00008,
            "request_targeted_start_delay_avg": 0.00039,
            "request_time_avg": float(np.mean([s["latency"] for s in stats])),
            "resolve_end_delay_avg": 0.00006,
            "resolve_time_avg": float(np.mean([s["latency"] for s in stats])) + 0.0002,
            "finalized_delay_avg": 0.00005,
            "processed_delay_avg": 0.00003,
        },
        "metrics": metrics,
        "requests": {"successful": [], "incomplete": [], "errored": [], "total": None},
        "start_time": measure_start,
        "end_time": measure_end,
        "duration": measure_end - measure_start,
        "warmup_duration": measure_start - stats[0]["start"],
        "cooldown_duration": max(s["end"] for s in stats) - measure_end,
    }


def guidellm_sample() -> dict:
    return {
        "metadata": {
            "version": 1,
            "guidellm_version": "0.4.0",
            "python_version": "3.12.3",
            "platform": "Linux-6.8.0-x86_64-with-glibc2.39",
        },
        "args": {
            "target": "http://127.0.0.1:8000",
            "backend": "openai_http",
            "model": MODEL,
            "profile": "concurrent",
            "rate": [1.0, 2.0],
            "data": ["prompt_tokens=64,output_tokens=16"],
            "max_requests": 8,
            "random_seed": 42,
            "sample_requests": 0,
            "output_path": "benchmarks.json",
        },
        "benchmarks": [
            guidellm_benchmark(1, 0, synthetic_requests(seed=11, count=8, streams=1, fail=None)),
            guidellm_benchmark(2, 1, synthetic_requests(seed=12, count=8, streams=2, fail=3)),
        ],
    }


# ------------------------------------------------------------------------------------------ SGLang
def sglang_line(requests: list[dict], rate: float, max_concurrency: int | None, details: bool) -> dict:
    """One line of `python -m sglang.bench_serving --output-file x.jsonl`: `calculate_metrics` and the `result` dict of
    `benchmark` (sgl-project/sglang python/sglang/bench_serving.py, commit 0033168f)."""
    benchmark_start = requests[0]["start"] - 0.0003
    duration = max(r["end"] for r in requests) + 0.0005 - benchmark_start
    output_lens, ttfts_all, itls_all = [], [], []
    total_input = completed = 0
    itls, tpots, ttfts, e2e = [], [], [], []
    for r in requests:
        ttft = r["chunks"][0] - r["start"]
        gaps = [b - a for a, b in zip(r["chunks"], r["chunks"][1:], strict=False)]
        ttfts_all.append(ttft)
        itls_all.append(gaps)
        if r["failed"]:
            output_lens.append(0)
            continue
        latency = r["end"] - r["start"]
        output_lens.append(r["output"])
        total_input += r["prompt"]
        if r["output"] > 1:
            tpots.append((latency - ttft) / (r["output"] - 1))
        itls += gaps
        ttfts.append(ttft)
        e2e.append(latency)
        completed += 1
    result = {
        "backend": "sglang-oai",
        "dataset_name": "random",
        "request_rate": rate,
        "max_concurrency": max_concurrency,
        "sharegpt_output_len": None,
        "random_input_len": 64,
        "random_output_len": 16,
        "random_range_ratio": 0.0,
        "duration": duration,
        "completed": completed,
        "total_input_tokens": total_input,
        "total_output_tokens": sum(output_lens),
        "total_output_tokens_retokenized": sum(output_lens),
        "request_throughput": completed / duration,
        "input_throughput": total_input / duration,
        "output_throughput": sum(output_lens) / duration,
        "mean_e2e_latency_ms": float(np.mean(e2e) * 1000),
        "median_e2e_latency_ms": float(np.median(e2e) * 1000),
        "std_e2e_latency_ms": float(np.std(e2e) * 1000),
        "p99_e2e_latency_ms": float(np.percentile(e2e, 99) * 1000),
        "mean_ttft_ms": float(np.mean(ttfts) * 1000),
        "median_ttft_ms": float(np.median(ttfts) * 1000),
        "std_ttft_ms": float(np.std(ttfts) * 1000),
        "p99_ttft_ms": float(np.percentile(ttfts, 99) * 1000),
        "mean_tpot_ms": float(np.mean(tpots) * 1000),
        "median_tpot_ms": float(np.median(tpots) * 1000),
        "std_tpot_ms": float(np.std(tpots) * 1000),
        "p99_tpot_ms": float(np.percentile(tpots, 99) * 1000),
        "mean_itl_ms": float(np.mean(itls) * 1000),
        "median_itl_ms": float(np.median(itls) * 1000),
        "std_itl_ms": float(np.std(itls) * 1000),
        "p95_itl_ms": float(np.percentile(itls, 95) * 1000),
        "p99_itl_ms": float(np.percentile(itls, 99) * 1000),
        "concurrency": float(np.sum(e2e) / duration),
        "accept_length": None,
    }
    if details:
        result |= {
            "input_lens": [r["prompt"] for r in requests],
            "output_lens": output_lens,
            "ttfts": ttfts_all,
            "itls": itls_all,
            "generated_texts": ["" if r["failed"] else " tok" * r["output"] for r in requests],
            "errors": ["Traceback (most recent call last):\n  ...\naiohttp.client_exceptions.ClientPayloadError: "
                       "Response payload is not completed\n" if r["failed"] else "" for r in requests],
        }
    return result


def sglang_sample() -> str:
    """Two appended runs: `--max-concurrency 4 --output-details` (request_rate inf, one failure) and
    `--request-rate 4` without details."""
    closed = sglang_line(synthetic_requests(seed=21, count=8, streams=4, fail=2), math.inf, 4, details=True)
    opened = sglang_line(synthetic_requests(seed=22, count=8, streams=2, fail=None), 4.0, None, details=False)
    return json.dumps(closed) + "\n" + json.dumps(opened) + "\n"


# ------------------------------------------------------------------------------------------ AIPerf
AIPERF_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def aiperf_stats(values: list[float], unit: str) -> dict:
    """`JsonMetricResult`: unit, avg, p1..p99 (numpy linear), min, max, std (population)."""
    array = np.asarray(values, dtype=float)
    stats = {"unit": unit, "avg": float(array.mean())}
    stats |= {f"p{p}": float(np.percentile(array, p)) for p in AIPERF_PERCENTILES}
    return stats | {"min": float(array.min()), "max": float(array.max()), "std": float(array.std())}


def aiperf_sample() -> dict:
    """`profile_export_aiperf.json` of `aiperf profile --concurrency 4 --request-count 8 --streaming`, as
    docs/tutorials/working-with-profile-exports.md shows it and exporters/metrics_json_exporter.py writes it
    (ai-dynamo/aiperf): one object, each metric tag at the top level."""
    requests = synthetic_requests(seed=31, count=8, streams=4, fail=6)
    ok = [r for r in requests if not r["failed"]]
    start, end = requests[0]["start"], max(r["end"] for r in requests)
    duration = end - start
    ms = 1000.0
    total_osl = sum(r["output"] for r in ok)
    total_isl = sum(r["prompt"] for r in ok)
    return {
        "schema_version": "1.0",
        "aiperf_version": "0.5.0",
        "request_throughput": {"unit": "requests/sec", "avg": len(ok) / duration},
        "request_latency": aiperf_stats([(r["end"] - r["start"]) * ms for r in ok], "ms"),
        "time_to_first_token": aiperf_stats([(r["chunks"][0] - r["start"]) * ms for r in ok], "ms"),
        "inter_token_latency": aiperf_stats(
            [((r["end"] - r["start"]) - (r["chunks"][0] - r["start"])) * ms / (r["output"] - 1) for r in ok], "ms"
        ),
        "inter_chunk_latency": aiperf_stats([(b - a) * ms for r in ok for a, b in zip(r["chunks"], r["chunks"][1:], strict=False)], "ms"),
        "input_sequence_length": aiperf_stats([r["prompt"] for r in ok], "tokens"),
        "output_sequence_length": aiperf_stats([r["output"] for r in ok], "tokens"),
        "output_token_throughput": {"unit": "tokens/sec", "avg": total_osl / duration},
        "total_token_throughput": {"unit": "tokens/sec", "avg": (total_isl + total_osl) / duration},
        "benchmark_duration": {"unit": "sec", "avg": duration},
        "request_count": {"unit": "requests", "avg": float(len(ok))},
        "error_request_count": {"unit": "requests", "avg": float(len(requests) - len(ok))},
        "total_isl": {"unit": "tokens", "avg": float(total_isl)},
        "total_osl": {"unit": "tokens", "avg": float(total_osl)},
        "was_cancelled": False,
        "start_time": "2025-10-17T20:22:08.939332",
        "end_time": "2025-10-17T20:22:09.901201",
        "error_summary": [
            {"error_details": {"code": 500, "type": "InternalServerError", "message": "Server encountered an internal error"}, "count": 1}
        ],
        "goodput": None,
        "good_request_count": None,
        "input_config": {
            "endpoint": {"model_names": [MODEL], "type": "completions", "streaming": True, "url": "localhost:8000"},
            "input": {"random_seed": 0, "prompt": {"output_tokens": {"mean": 16}}},
            "loadgen": {"concurrency": 4, "request_count": 8},
            "cli_command": f"aiperf profile -m {MODEL} --url localhost:8000 --streaming --concurrency 4 --request-count 8 --osl 16",
        },
    }


# ------------------------------------------------------------------------------------------ llmperf
def llmperf_sample() -> dict:
    """`token_benchmark_ray.py --results-dir x`'s `<model>_64_16_summary.json`: `metrics_summary` and
    `LLMPerfResults.to_dict` (ray-project/llmperf token_benchmark_ray.py, src/llmperf/utils.py,
    src/llmperf/common_metrics.py): metadata and results flattened with `_`, written with json's default=str, so
    numpy integers (the min and max of the token counts) arrive as strings."""
    requests = synthetic_requests(seed=41, count=8, streams=2, fail=4)
    start_time, end_time = requests[0]["start"] - 0.002, max(r["end"] for r in requests) + 0.001
    rows = []
    for r in requests:
        ttft = r["chunks"][0] - r["start"]
        # the client's time_to_next_token: TTFT, then every gap; their sum is divided by the output tokens
        inter = (r["chunks"][-1] - r["start"]) / r["output"]
        e2e = r["end"] - r["start"]
        rows.append(
            {
                "error_code": 500 if r["failed"] else None,
                "inter_token_latency_s": inter,
                "ttft_s": ttft,
                "end_to_end_latency_s": e2e,
                "request_output_throughput_token_per_s": r["output"] / e2e,
                "number_input_tokens": r["prompt"],
                "number_output_tokens": r["output"],
            }
        )
    ok = [row for row in rows if row["error_code"] is None]
    flat: dict = {"version": "2023-08-31", "name": "HuggingFaceTB-SmolLM2-135M-Instruct_64_16_summary", "model": MODEL,
                  "mean_input_tokens": 64, "stddev_input_tokens": 0, "mean_output_tokens": 16, "stddev_output_tokens": 0,
                  "num_concurrent_requests": 2}  # fmt: skip
    for key in ("inter_token_latency_s", "ttft_s", "end_to_end_latency_s", "request_output_throughput_token_per_s",
                "number_input_tokens", "number_output_tokens"):  # fmt: skip
        values = np.asarray([row[key] for row in ok])
        for q in (25, 50, 75, 90, 95, 99):
            flat[f"results_{key}_quantiles_p{q}"] = float(np.percentile(values.astype(float), q))
        flat[f"results_{key}_mean"] = float(values.mean())
        low, high = values.min(), values.max()
        integers = values.dtype.kind == "i"
        flat[f"results_{key}_min"] = str(low) if integers else float(low)
        flat[f"results_{key}_max"] = str(high) if integers else float(high)
        flat[f"results_{key}_stddev"] = float(values.astype(float).std(ddof=1))
    errors = len(rows) - len(ok)
    flat |= {
        "results_num_requests_started": len(rows),
        "results_error_rate": errors / len(rows),
        "results_number_errors": errors,
        "results_error_code_frequency": "{500: 1}",
        "results_mean_output_throughput_token_per_s": sum(row["number_output_tokens"] for row in ok) / (end_time - start_time),
        "results_num_completed_requests": len(ok),
        "results_num_completed_requests_per_min": len(ok) / (end_time - start_time) * 60,
        "timestamp": 1749651753,
    }
    return flat


if __name__ == "__main__":
    (HERE / "vllm_bench_serve_sample.json").write_text(json.dumps(vllm_sample()), encoding="utf-8")
    (HERE / "guidellm_report_sample.json").write_text(
        json.dumps(guidellm_sample(), indent=1), encoding="utf-8"
    )
    (HERE / "sglang_bench_serving_sample.jsonl").write_text(sglang_sample(), encoding="utf-8")
    (HERE / "aiperf_profile_export_sample.json").write_text(json.dumps(aiperf_sample(), indent=2), encoding="utf-8")
    (HERE / "llmperf_summary_sample.json").write_text(json.dumps(llmperf_sample(), indent=4), encoding="utf-8")
