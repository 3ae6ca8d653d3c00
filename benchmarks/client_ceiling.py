"""servelab's client against GuideLLM and AIPerf, on one core each, against the same reference emitter in one run.

    .venv/bin/python benchmarks/client_ceiling.py [--levels 1 4 16 64 128 256 512 768] [--rounds 8]
        [--tools servelab servelab-httpx guidellm aiperf vllm-bench] [--venvs ~/.cache/servelab/bench-venvs] [--json out.json]

One emitter (tools/emitter, `--record`) runs on the other CPUs with a fixed TTFT (20 ms) and ITL (5 ms). Each
client in turn is pinned to CPU 0 (servelab with sched_setaffinity, the others started from a thread pinned to
CPU 0, whose affinity they and their worker processes inherit) and drives it closed loop at each concurrency in
`--levels`, `rounds` requests per stream. For every (client, level) the script prints:

- throughput counted by the emitter (the same yardstick for every client): req/s and chunks/s written in the
  steady part of the run, and each client's own req/s and tok/s;
- TTFT and ITL as the client reported them and as the emitter's records say they were (`true`), which
  includes the emitter's own lateness.

A level is sustained under servelab's criterion (`servelab.checks.calibrate.is_sustained`: ITL mean and median
within 1% of the truth, TTFT mean within 2% or 0.2 ms, no errors); a client's ceiling is its best sustained
level's chunks/s. The script prints that ratio, and the ratio under the ITL-only criterion for comparison.
ITL definitions differ: servelab and AIPerf (inter_chunk_latency) pool every gap between chunks; GuideLLM
keeps only the first and last token of a request, so its ITL is the per-request (last - first) / (n - 1),
and its truth here is computed the same way.

The other clients live in their own venvs (never the project's): `python3.12 -m venv <venvs>/guidellm &&
<venvs>/guidellm/bin/pip install guidellm`, the same for aiperf. `vllm-bench` (`vllm bench serve`) runs only where
this interpreter imports vLLM: vllm on PyPI pins a CUDA build of torch (and flashinfer, nvidia-cutlass-dsl), so it
does not install CPU-only; on the GPU machine it comes from the offline bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from servelab import aio
from servelab.analyse import metrics
from servelab.checks.agreement import vllm_bench_args, vllm_bench_command
from servelab.checks.calibrate import (
    Deviation,
    is_sustained,
    request_lifetime_s,
    running_emitter,
    true_latencies,
)
from servelab.clock import now_ns
from servelab.measure.clients import Target
from servelab.measure.load import ensure_file_descriptors, make_client, run_point
from servelab.measure.prompts import Prompt
from servelab.params import ConcurrencyLoad, Sweep

TTFT_MS, ITL_MS = 20.0, 5.0
RAMP_UP_S = 0.1
"""Every client starts its streams over 0.1 s, so they do not all read in the same emitter tick."""
MODEL = "servelab-emitter"
VLLM_NOTE = (
    "vllm bench serve: not run. vllm 0.33.0 on PyPI requires torch==2.13.0 (a CUDA build), flashinfer-python "
    "and nvidia-cutlass-dsl[cu13]; there is no CPU-only install from PyPI."
)


# ------------------------------------------------------------------------------------------ truth
def truth_of(rows: list[dict[str, Any]], start_ns: int, end_ns: int, lifetime_s: float) -> dict[str, Any]:
    """The emitter's view of one client run: true TTFT and ITL (pooled and per request), and throughput
    counted over the steady part [first request + one lifetime, last write - one lifetime]."""
    rows = [r for r in rows if start_ns <= r["received_ns"] <= end_ns and r.get("outcome") == "done"]
    if not rows:
        return {"requests": 0}
    ttft, gaps = true_latencies(rows, start_ns, end_ns)
    writes = [np.asarray(r["write_ns"], dtype=np.int64) for r in rows]
    per_request = np.asarray([(w[-1] - w[0]) / 1e6 / (w.size - 1) for w in writes if w.size > 1])
    first = min(r["received_ns"] for r in rows)
    last = max(int(w[-1]) for w in writes)
    lifetime_ns = round(lifetime_s * 1e9)
    low, high = first + lifetime_ns, last - lifetime_ns
    if high - low < lifetime_ns:  # a short run: count over all of it
        low, high = first, last
    all_writes = np.concatenate(writes)
    chunks_s = int(((all_writes >= low) & (all_writes < high)).sum()) / ((high - low) / 1e9)
    return {
        "requests": len(rows),
        "ttft_ms": ttft,
        "itl_ms": gaps,
        "itl_per_request_ms": per_request,
        "req_s": chunks_s / float(np.mean([w.size for w in writes])),  # every request carries the same tokens
        "chunks_s": chunks_s,
    }


def stats(mean: float | None, p50: float | None, p99: float | None, count: int) -> dict[str, float | None]:
    return {"count": count, "mean": mean, "p50": p50, "p99": p99}


def deviation(reported: dict[str, float | None], true: np.ndarray) -> Deviation:
    truth = Deviation.of(true, true).true
    error = {
        k: None if reported[k] is None or truth[k] is None else reported[k] - truth[k]
        for k in ("mean", "p50", "p99")
    }
    return Deviation(reported, truth, error)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------------ the clients
def run_servelab(
    url: str, streams: int, requests: int, tokens: int, cpu: int, work: Path, transport: str = "http11"
) -> dict[str, Any]:
    target = Target("emitter", "emitter", MODEL, MODEL, url, "openai")
    prompts = [Prompt(f"calibrate the client, request {i}", "en", 6) for i in range(64)]
    sweep = Sweep(
        load=(ConcurrencyLoad(values=(streams,), ramp_up_s=RAMP_UP_S),),
        output_tokens=tokens,
        requests_per_point=requests,
        warmup_requests=0,
        request_timeout_s=120,
    )
    records: list[Any] = []

    async def go() -> float:
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        try:
            async with make_client(streams, transport=transport) as client:  # type: ignore[arg-type]
                start = time.process_time()
                await run_point(
                    client, target, prompts, sweep.load[0], streams, sweep, "bench", records.append
                )
                return time.process_time() - start
        finally:
            os.sched_setaffinity(0, previous)

    wall = time.perf_counter()
    cpu_s = aio.run_sync(go())
    wall = time.perf_counter() - wall
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    ttft = np.asarray([metrics.ttft_ms(r) for r in ok])
    gaps = np.concatenate([np.diff(np.asarray(r.chunk_ns)) / 1e6 for r in ok if len(r.chunk_ns) > 1])
    seconds = metrics.duration_s(measured)
    return {
        "requests": len(measured),
        "errors": len(measured) - len(ok),
        "req_s": metrics.requests_per_s(measured, seconds),
        "tok_s": metrics.output_tokens_per_s(measured, seconds),
        "ttft_ms": stats(*_summary(ttft), ttft.size),
        "itl_ms": stats(*_summary(gaps), gaps.size),
        "itl_kind": "pooled",
        "client_cpu_s": cpu_s,
        "wall_s": wall,
    }


def _summary(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if not values.size:
        return None, None, None
    return float(values.mean()), float(np.percentile(values, 50)), float(np.percentile(values, 99))


def run_guidellm(
    url: str, streams: int, requests: int, tokens: int, cpu: int, work: Path, venvs: Path
) -> dict[str, Any]:
    prompts = work / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("".join(f"calibrate the client, request {i}\n" for i in range(100_000)))
    out = work / f"guidellm-{streams}.json"
    command = [
        str(venvs / "guidellm" / "bin" / "guidellm"), "run",
        "--backend", f"kind=openai_http,target={url},model={MODEL},request_format=/v1/completions,max_tokens={tokens}",
        "--profile", f"kind=concurrent,streams={streams},rampup_duration={RAMP_UP_S}",
        "--constraint", f"kind=max_requests,count={requests}",
        "--data", f"kind=text_file,path={prompts}",
        "--output", f"kind=json,path={out}",
        "--disable-console",
    ]  # fmt: skip
    run = _external(command, work / f"guidellm-{streams}.log", "guidellm", cpu)
    benchmark = json.loads(out.read_text())["benchmarks"][0]
    m = benchmark["metrics"]

    def distribution(name: str) -> dict[str, float | None]:
        d = m[name]["successful"]
        return stats(d["mean"], d["median"], d["percentiles"]["p99"], int(d["count"]))

    successful = int(m["request_totals"]["successful"])
    return run | {
        "requests": int(m["request_totals"]["total"]),
        "errors": int(m["request_totals"]["errored"]) + int(m["request_totals"]["incomplete"]),
        "req_s": successful / benchmark["duration"],
        "tok_s": m["output_tokens_per_second"]["successful"]["mean"],
        "ttft_ms": distribution("time_to_first_token_ms"),
        "itl_ms": distribution("inter_token_latency_ms"),
        "itl_kind": "per_request",
    }


def run_aiperf(
    url: str, streams: int, requests: int, tokens: int, cpu: int, work: Path, venvs: Path, tokenizer: Path
) -> dict[str, Any]:
    out = work / f"aiperf-{streams}"
    command = [
        str(venvs / "aiperf" / "bin" / "aiperf"), "profile",
        "--url", url, "--model", MODEL, "--endpoint-type", "completions", "--streaming",
        "--concurrency", str(streams), "--request-count", str(requests),
        "--concurrency-ramp-duration", str(RAMP_UP_S),
        "--tokenizer", str(tokenizer),
        "--prompt-input-tokens-mean", "6", "--prompt-input-tokens-stddev", "0",
        "--prompt-output-tokens-mean", str(tokens), "--prompt-output-tokens-stddev", "0",
        "--extra-inputs", "ignore_eos:true", "--use-server-token-count", "--use-legacy-max-tokens",
        "--output-artifact-dir", str(out), "--ui-type", "none",
    ]  # fmt: skip
    run = _external(command, work / f"aiperf-{streams}.log", "aiperf", cpu)
    report = json.loads((out / "profile_export_aiperf.json").read_text())

    def distribution(name: str) -> dict[str, float | None]:
        d = report[name]
        return stats(d["avg"], d["p50"], d["p99"], int(d.get("count") or 0))

    errors = sum(int(e.get("count", 1)) for e in report.get("error_summary") or [])
    return run | {
        "requests": int(report["request_count"]["avg"]) + errors,
        "errors": errors,
        "req_s": report["request_throughput"]["avg"],
        "tok_s": report["output_token_throughput"]["avg"],
        "ttft_ms": distribution("time_to_first_token"),
        "itl_ms": distribution("inter_chunk_latency"),
        "itl_kind": "pooled",
    }


def run_vllm_bench(
    url: str, streams: int, requests: int, tokens: int, cpu: int, work: Path, tokenizer: Path
) -> dict[str, Any]:
    """`vllm bench serve` with the GPU comparison's arguments (random dataset, greedy, ignore_eos, all streams at
    once), pinned to the client's core; each level is a fresh process, so vLLM's import is in its wall time."""
    args = vllm_bench_args(url, MODEL, str(tokenizer), streams, requests, 8, tokens, work)
    command = vllm_bench_command(args, sys.executable)
    run = _external(command, work / f"vllm-bench-{streams}.log", "vllm bench serve", cpu)
    result = json.loads((work / args[args.index("--result-filename") + 1]).read_text())

    def distribution(name: str) -> dict[str, float | None]:
        return stats(result[f"mean_{name}_ms"], result[f"median_{name}_ms"], result[f"p99_{name}_ms"], int(result["completed"]))

    return run | {
        "requests": requests,
        "errors": requests - int(result["completed"]),
        "req_s": result["request_throughput"],
        "tok_s": result["output_throughput"],
        "ttft_ms": distribution("ttft"),
        "itl_ms": distribution("itl"),
        "itl_kind": "pooled",
    }


def _external(command: list[str], log: Path, name: str, cpu: int) -> dict[str, Any]:
    """Run another client pinned to `cpu`: it inherits the affinity of the thread that starts it, and its worker
    processes inherit it in turn."""
    cpu_before, wall = children_cpu_s(), time.perf_counter()
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        with open(log, "w") as handle:
            completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    finally:
        os.sched_setaffinity(0, previous)
    if completed.returncode != 0:
        raise RuntimeError(f"{name} exited with {completed.returncode}; see {log}")
    return {"client_cpu_s": children_cpu_s() - cpu_before, "wall_s": time.perf_counter() - wall}


def version_of(venvs: Path, tool: str) -> str:
    try:
        text = subprocess.run(
            [str(venvs / tool / "bin" / tool), "--version"], capture_output=True, text=True, check=False
        ).stdout
    except OSError as error:
        return f"not installed ({error})"
    return text.strip().splitlines()[-1] if text.strip() else "unknown"


# ------------------------------------------------------------------------------------------ the run
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64, 128, 256, 512, 768])
    parser.add_argument("--rounds", type=int, default=8, help="requests per stream at each level")
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--tools", nargs="+", default=["servelab", "guidellm", "aiperf"])
    parser.add_argument("--venvs", type=Path, default=Path.home() / ".cache" / "servelab" / "bench-venvs")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()

    allowed = sorted(os.sched_getaffinity(0))
    client_cpu, emitter_cpus = allowed[0], allowed[1:] or allowed
    lifetime_s = request_lifetime_s(TTFT_MS, ITL_MS, args.output_tokens)
    ensure_file_descriptors(2 * max(args.levels))
    work = Path(tempfile.mkdtemp(prefix="servelab-ceiling-"))
    versions = {"servelab": _servelab_version()} | {
        t: version_of(args.venvs, t) for t in ("guidellm", "aiperf")
    }
    print(f"client CPU {client_cpu}; emitter CPU {','.join(map(str, emitter_cpus))}; work folder {work}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if "vllm-bench" in args.tools:
        versions["vllm"] = _vllm_version()
    else:
        print(VLLM_NOTE)
    tokenizer = None
    if {"aiperf", "vllm-bench"} & set(args.tools):
        from servelab.serve.models import resolve_shape, write_shape

        tokenizer = write_shape(resolve_shape("tinyllama-1.1b"), work / "tokenizer")

    rows: list[dict[str, Any]] = []
    workers = max(1, min(4, len(emitter_cpus)))
    with running_emitter(TTFT_MS, ITL_MS, workers=workers, cpus=emitter_cpus) as emitter:
        for tool in args.tools:
            misses = 0
            for streams in args.levels:
                requests = max(args.min_requests, streams * args.rounds)
                start = now_ns()
                try:
                    if tool in ("servelab", "servelab-httpx"):
                        got = run_servelab(
                            emitter.base_url, streams, requests, args.output_tokens, client_cpu, work,
                            transport="httpx" if tool == "servelab-httpx" else "http11",
                        )
                    elif tool == "vllm-bench":
                        got = run_vllm_bench(
                            emitter.base_url, streams, requests, args.output_tokens, client_cpu, work, tokenizer
                        )
                    elif tool == "guidellm":
                        got = run_guidellm(
                            emitter.base_url,
                            streams,
                            requests,
                            args.output_tokens,
                            client_cpu,
                            work,
                            args.venvs,
                        )
                    else:
                        got = run_aiperf(
                            emitter.base_url,
                            streams,
                            requests,
                            args.output_tokens,
                            client_cpu,
                            work,
                            args.venvs,
                            tokenizer,
                        )
                except (RuntimeError, OSError, KeyError, ValueError) as error:
                    print(f"{tool} at {streams} streams failed: {error}")
                    break
                time.sleep(0.3)  # the emitter appends its records every 100 ms
                truth = truth_of(emitter.records(), start, now_ns(), lifetime_s)
                row = _row(tool, streams, got, truth)
                rows.append(row)
                print(_line(row), flush=True)
                misses = 0 if row["itl_only"] else misses + 1
                if misses == 2:  # two levels in a row past even the looser criterion: done with this client
                    break
    print()
    print(_table(rows))
    print()
    print(_ceilings(rows))
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "rows": rows, "vllm": None if "vllm-bench" in args.tools else VLLM_NOTE}, indent=2))
    return 0


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        return "not importable here"


def _servelab_version() -> str:
    import servelab

    return f"{servelab.__version__} ({aio.loop_name()})"


def _row(tool: str, streams: int, got: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    true_itl = truth.get("itl_per_request_ms") if got["itl_kind"] == "per_request" else truth.get("itl_ms")
    ttft = deviation(got["ttft_ms"], truth.get("ttft_ms", np.asarray([])))
    itl = deviation(got["itl_ms"], true_itl if true_itl is not None else np.asarray([]))
    errors = got["errors"] or 0
    return {
        "tool": tool,
        "streams": streams,
        "requests": got["requests"],
        "errors": errors,
        "server_req_s": truth.get("req_s", 0.0),
        "server_chunks_s": truth.get("chunks_s", 0.0),
        "tool_req_s": got["req_s"],
        "tool_tok_s": got["tok_s"],
        "client_cpu_pct": 100 * got["client_cpu_s"] / got["wall_s"] if got["wall_s"] else None,
        "ttft_ms": {"reported": ttft.reported, "true": ttft.true, "error": ttft.error},
        "itl_ms": {"reported": itl.reported, "true": itl.true, "error": itl.error, "kind": got["itl_kind"]},
        "sustained": is_sustained(ttft, itl, errors, got["requests"]),
        "itl_only": errors == 0 and all(abs(itl.relative(s)) <= 0.01 for s in ("mean", "p50")),
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _line(row: dict[str, Any]) -> str:
    t, i = row["ttft_ms"], row["itl_ms"]
    return (
        f"{row['tool']:>8} {row['streams']:>4} streams: {row['server_req_s']:8,.0f} req/s {row['server_chunks_s']:9,.0f} chunks/s"
        f" | TTFT mean {_f(t['reported']['mean'])}/{_f(t['true']['mean'])} p99 {_f(t['reported']['p99'])}/{_f(t['true']['p99'])}"
        f" | ITL mean {_f(i['reported']['mean'], 3)}/{_f(i['true']['mean'], 3)} p50 {_f(i['reported']['p50'], 3)}/{_f(i['true']['p50'], 3)}"
        f" p99 {_f(i['reported']['p99'])}/{_f(i['true']['p99'])} | {'ok' if row['sustained'] else 'over'}"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    table = pd.DataFrame(
        [
            {
                "client": r["tool"],
                "streams": r["streams"],
                "req/s (emitter)": f"{r['server_req_s']:,.0f}",
                "chunks/s (emitter)": f"{r['server_chunks_s']:,.0f}",
                "req/s (own)": f"{r['tool_req_s']:,.0f}",
                "tok/s (own)": f"{r['tool_tok_s']:,.0f}",
                "CPU incl. start-up": "-" if r["client_cpu_pct"] is None else f"{r['client_cpu_pct']:.0f}%",
                "TTFT mean rep/true": f"{_f(r['ttft_ms']['reported']['mean'])}/{_f(r['ttft_ms']['true']['mean'])}",
                "TTFT p99 rep/true": f"{_f(r['ttft_ms']['reported']['p99'])}/{_f(r['ttft_ms']['true']['p99'])}",
                "ITL mean rep/true": f"{_f(r['itl_ms']['reported']['mean'], 3)}/{_f(r['itl_ms']['true']['mean'], 3)}",
                "ITL p50 rep/true": f"{_f(r['itl_ms']['reported']['p50'], 3)}/{_f(r['itl_ms']['true']['p50'], 3)}",
                "ITL p99 rep/true": f"{_f(r['itl_ms']['reported']['p99'])}/{_f(r['itl_ms']['true']['p99'])}",
                "errors": r["errors"],
                "verdict": "ok" if r["sustained"] else ("ITL only" if r["itl_only"] else "over"),
            }
            for r in rows
        ]
    )
    return table.to_string(index=False)


def _ceilings(rows: list[dict[str, Any]]) -> str:
    lines = []
    for key, label in (
        ("sustained", "servelab's criterion (ITL mean+p50 1%, TTFT mean 2%/0.2 ms)"),
        ("itl_only", "ITL only"),
    ):
        best: dict[str, dict[str, Any] | None] = {}
        for tool in dict.fromkeys(r["tool"] for r in rows):
            held = [r for r in rows if r["tool"] == tool and r[key]]
            best[tool] = max(held, key=lambda r: r["server_chunks_s"]) if held else None
        parts = [
            f"{tool} {b['server_chunks_s']:,.0f} chunks/s, {b['server_req_s']:,.0f} req/s at {b['streams']} streams"
            if b
            else f"{tool} none held"
            for tool, b in best.items()
        ]
        lines.append(f"ceiling on one core, {label}: " + "; ".join(parts))
        ours = best.get("servelab")
        others = [b["server_chunks_s"] for tool, b in best.items() if not tool.startswith("servelab") and b]
        if ours and others:
            lines.append(f"  servelab / best of GuideLLM and AIPerf = {ours['server_chunks_s'] / max(others):.1f}x")
        elif ours and any(not tool.startswith("servelab") for tool in best):
            lines.append("  servelab / best of GuideLLM and AIPerf = unbounded: neither held any level")
        over_httpx = best.get("servelab-httpx")
        if ours and over_httpx:
            lines.append(f"  servelab (http11) / servelab over httpx = {ours['server_chunks_s'] / over_httpx['server_chunks_s']:.1f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
