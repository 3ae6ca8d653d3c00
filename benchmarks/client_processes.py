"""servelab's client over 1, 2, 4 and 8 processes, side by side in one run against one reference emitter.

    .venv/bin/python benchmarks/client_processes.py [--processes 1 2 4 8] [--streams-per-process 128]
        [--rounds 8] [--client-cpus 0-7] [--json out.json]

One emitter (tools/emitter, `--record`, TTFT 20 ms, ITL 5 ms as in `servelab calibrate`) runs on the emitter CPUs.
For each process count N, one closed-loop point of N x `--streams-per-process` streams is driven by N client
processes (servelab.measure.workers, the code a sweep with `sweep.client_processes: N` runs), pinned round-robin to
the client CPUs. By default the client gets the first half of the usable CPUs and the emitter the rest; with 2 CPUs,
one each, so N processes share one core and only the merge is on trial. For every N the script prints:

- chunks/s counted by the emitter over the steady part of the point, and its ratio to N = 1;
- TTFT and ITL as the client reported them against the emitter's record (reported / true, ms), and whether the
  point holds servelab's accuracy criterion (`servelab.checks.calibrate.is_sustained`: ITL mean and median within
  1 %, TTFT mean within 2 % or 0.2 ms, no errors);
- whether the N processes' records merged exactly: every request once (indices 0..n-1), none lost, in completion
  order on the one clock (CLOCK_MONOTONIC, shared by every process of a Linux host).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from servelab.aio import run_sync
from servelab.analyse import metrics
from servelab.checks.calibrate import (
    Deviation,
    is_sustained,
    request_lifetime_s,
    running_emitter,
    true_latencies,
)
from servelab.clock import now_ns
from servelab.measure.clients import Target
from servelab.measure.load import ensure_file_descriptors
from servelab.measure.prompts import Prompt
from servelab.measure.workers import PARTS_DIR, run_point_in_processes
from servelab.params import ConcurrencyLoad, Sweep
from servelab.records import RequestRecord

TTFT_MS, ITL_MS = 20.0, 5.0
RAMP_UP_S = 0.1
MODEL = "servelab-emitter"
PROMPTS = [Prompt(f"calibrate the client, request {i}", "en", 6) for i in range(64)]


def cpu_list(text: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]."""
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def split_cpus(allowed: list[int], client: list[int] | None) -> tuple[list[int], list[int]]:
    """The client's CPUs (given, or the first half) and the emitter's (the rest; all of them if none is left)."""
    client = client or allowed[: max(1, len(allowed) // 2)]
    emitter = [cpu for cpu in allowed if cpu not in client] or allowed
    return client, emitter


def merge_check(records: list[RequestRecord], expected: int) -> dict[str, Any]:
    """Did the processes' records merge exactly: all there, each index once, in completion order?"""
    indices = sorted(r.request_index for r in records)
    ends = [r.end_ns for r in records]
    result = {
        "records": len(records),
        "expected": expected,
        "each_index_once": indices == list(range(expected)),
        "in_completion_order": ends == sorted(ends),
    }
    result["exact"] = result["records"] == expected and result["each_index_once"] and result["in_completion_order"]
    return result


def steady_chunks_s(rows: list[dict[str, Any]], lifetime_s: float) -> float:
    """Chunks the emitter wrote per second over [first request + one lifetime, last write - one lifetime]."""
    writes = [np.asarray(r["write_ns"], dtype=np.int64) for r in rows if r.get("outcome") == "done" and r["write_ns"]]
    if not writes:
        return 0.0
    first, last = min(int(w[0]) for w in writes), max(int(w[-1]) for w in writes)
    lifetime_ns = round(lifetime_s * 1e9)
    low, high = first + lifetime_ns, last - lifetime_ns
    if high - low < lifetime_ns:  # a short point: count over all of it
        low, high = first, last
    every = np.concatenate(writes)
    return int(((every >= low) & (every < high)).sum()) / ((high - low) / 1e9)


def run_level(url: str, processes: int, streams: int, requests: int, tokens: int, cpus: list[int], work: Path) -> tuple[list[RequestRecord], float]:
    sweep = Sweep(
        load=(ConcurrencyLoad(values=(streams,), ramp_up_s=RAMP_UP_S),),
        output_tokens=tokens,
        requests_per_point=requests,
        warmup_requests=0,
        request_timeout_s=120,
        client_processes=processes,
    )
    target = Target("emitter", "emitter", MODEL, MODEL, url, "openai")
    records: list[RequestRecord] = []
    wall = time.perf_counter()
    run_sync(run_point_in_processes(
        processes, target, PROMPTS, sweep.load[0], streams, sweep, f"processes-{processes}", records.append,
        work / PARTS_DIR, cpus=cpus,
    ))  # fmt: skip
    return records, time.perf_counter() - wall


def judge(processes: int, streams: int, records: list[RequestRecord], truth_rows: list[dict[str, Any]], start_ns: int, end_ns: int, lifetime_s: float, expected: int, wall_s: float) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    reported_ttft = np.asarray([metrics.ttft_ms(r) for r in ok], dtype=float)
    gaps = [np.diff(np.asarray(r.chunk_ns)) / 1e6 for r in ok if len(r.chunk_ns) > 1]
    reported_itl = np.concatenate(gaps) if gaps else np.asarray([])
    true_ttft, true_itl = true_latencies(truth_rows, start_ns, end_ns)
    ttft, itl = Deviation.of(reported_ttft, true_ttft), Deviation.of(reported_itl, true_itl)
    errors = len(records) - len(ok)
    return {
        "processes": processes,
        "streams": streams,
        "requests": len(records),
        "errors": errors,
        "chunks_s": steady_chunks_s([r for r in truth_rows if start_ns <= r["received_ns"] <= end_ns], lifetime_s),
        "wall_s": wall_s,
        "ttft_ms": {"reported": ttft.reported, "true": ttft.true, "error": ttft.error},
        "itl_ms": {"reported": itl.reported, "true": itl.true, "error": itl.error},
        "sustained": is_sustained(ttft, itl, errors, len(records)),
        "merge": merge_check(records, expected),
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def line(row: dict[str, Any], base: float | None) -> str:
    t, i, m = row["ttft_ms"], row["itl_ms"], row["merge"]
    ratio = f"{row['chunks_s'] / base:4.1f}x" if base else "  - "
    return (
        f"{row['processes']:>2} processes {row['streams']:>5} streams: {row['chunks_s']:9,.0f} chunks/s ({ratio})"
        f" | TTFT mean {_f(t['reported']['mean'])}/{_f(t['true']['mean'])}"
        f" | ITL mean {_f(i['reported']['mean'], 3)}/{_f(i['true']['mean'], 3)} p50 {_f(i['reported']['p50'], 3)}/{_f(i['true']['p50'], 3)}"
        f" | {'ok' if row['sustained'] else 'over'} | merge {m['records']}/{m['expected']} "
        f"{'exact' if m['exact'] else 'NOT EXACT'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--streams-per-process", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8, help="requests per stream")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--client-cpus", type=cpu_list, default=None, help="e.g. 0-7; default: the first half")
    parser.add_argument("--emitter-workers", type=int, default=None, help="default: one per emitter CPU, at most 8")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()

    allowed = sorted(os.sched_getaffinity(0))
    client_cpus, emitter_cpus = split_cpus(allowed, args.client_cpus)
    workers = args.emitter_workers or max(1, min(8, len(emitter_cpus)))
    lifetime_s = request_lifetime_s(TTFT_MS, ITL_MS, args.output_tokens)
    ensure_file_descriptors(2 * max(args.processes) * args.streams_per_process)
    work = Path(tempfile.mkdtemp(prefix="servelab-processes-"))
    print(f"{len(allowed)} CPUs: client {','.join(map(str, client_cpus))}; emitter {','.join(map(str, emitter_cpus))} "
          f"({workers} workers); TTFT {TTFT_MS:g} ms, ITL {ITL_MS:g} ms, {args.output_tokens} tokens a request")
    rows: list[dict[str, Any]] = []
    with running_emitter(TTFT_MS, ITL_MS, workers=workers, cpus=emitter_cpus) as emitter:
        for processes in args.processes:
            streams = processes * args.streams_per_process
            requests = streams * args.rounds
            start = now_ns()
            records, wall_s = run_level(emitter.base_url, processes, streams, requests, args.output_tokens, client_cpus, work)
            time.sleep(0.3)  # the emitter appends its records every 100 ms
            truth = emitter.records()
            row = judge(processes, streams, records, truth, start, now_ns(), lifetime_s, requests, wall_s)
            rows.append(row)
            print(line(row, rows[0]["chunks_s"] if len(rows) > 1 else None), flush=True)
    base = rows[0]["chunks_s"] if rows else 0.0
    print()
    for row in rows[1:]:
        print(f"{row['processes']} processes / {rows[0]['processes']}: {row['chunks_s'] / base:.2f}x the chunks/s"
              f" ({'within' if row['sustained'] else 'NOT within'} the accuracy criterion)")
    exact = all(row["merge"]["exact"] for row in rows)
    print(f"records merged exactly (count, each index once, completion order) at every process count: {'yes' if exact else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"cpus": allowed, "client_cpus": client_cpus, "emitter_cpus": emitter_cpus,
                                         "emitter_workers": workers, "rows": rows}, indent=2))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
