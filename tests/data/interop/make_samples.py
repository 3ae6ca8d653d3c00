"""Writes the two hand-built sample files of this folder. They are NOT recorded from real runs.

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


if __name__ == "__main__":
    (HERE / "vllm_bench_serve_sample.json").write_text(json.dumps(vllm_sample()), encoding="utf-8")
    (HERE / "guidellm_report_sample.json").write_text(
        json.dumps(guidellm_sample(), indent=1), encoding="utf-8"
    )
