"""What a load point costs beyond its own requests: one `run_sweep` over many small points in one process, as a
notebook runs them, against the reference emitter (TTFT and ITL 1 ms, so the requests themselves are short).

    .venv/bin/python benchmarks/point_overhead.py [--concurrency 1 2 4 8] [--languages en ko zh] [--requests 4]

For the whole sweep it prints the wall time, the time inside points (each point's start to end in
points.jsonl) and the rest, per point: planning, prompt building, writing records and summaries. Inside each
point it also prints the part that is not requests: from the point's start to its first intended send, and from
its last request's end to the point's end. The issue's goal is under 1 s per point in all.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from servelab.checks.calibrate import running_emitter
from servelab.clock import now_ns
from servelab.measure.sweep import run_sweep
from servelab.params import parse_params
from servelab.records import latest_points, read_requests
from servelab.serve.deploy import Fleet, RunningServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--languages", nargs="+", default=["en", "ko", "zh"])
    parser.add_argument("--requests", type=int, default=4, help="measured requests per point")
    args = parser.parse_args(argv)

    with running_emitter(1.0, 1.0) as emitter:
        params = parse_params(
            {
                "name": "point-overhead",
                "deployments": [{"name": "emitter", "model": "servelab-emitter", "engine": {"kind": "vllm"}}],
                "sweep": {
                    "languages": args.languages,
                    "input_tokens": 32,
                    "output_tokens": 8,
                    "load": [{"kind": "concurrency", "values": args.concurrency}],
                    "requests_per_point": args.requests,
                    "warmup_requests": 1,
                },
            },
            "<point_overhead>",
        )
        with tempfile.TemporaryDirectory() as folder:
            run_dir = Path(folder)
            server = RunningServer(
                name="emitter", framework="vllm", model="servelab-emitter", served_model="servelab-emitter",
                api_flavour="openai", base_url=emitter.base_url, port=int(emitter.base_url.rsplit(":", 1)[1]),
                pid=emitter.process.pid, log_path=str(run_dir / "emitter.log"), argv=[], launched_ns=now_ns(),
                ready_ns=now_ns(),
            )  # fmt: skip
            fleet = Fleet(run_dir=run_dir, servers={"emitter": server}, owned=False)
            started = time.perf_counter()
            run_sweep(params, run_dir, fleet, progress=False)
            wall_s = time.perf_counter() - started
            points = list(latest_points(run_dir).values())
            requests = read_requests(run_dir)

    inside_s = sum((p.end_ns - p.start_ns) / 1e9 for p in points)
    lead, tail = [], []
    for point in points:
        mine = [r for r in requests if r.point_id == point.point_id]
        lead.append((min(r.intended_send_ns for r in mine) - point.start_ns) / 1e6)
        tail.append((point.end_ns - max(r.end_ns for r in mine)) / 1e6)
    count = len(points)
    between_s = wall_s - inside_s
    print(f"{count} points, {len(requests)} requests (warm-ups included) in {wall_s:.2f} s")
    print(f"inside points: {inside_s:.2f} s; outside points (planning, summaries, setup): {between_s:.2f} s "
          f"= {1000 * between_s / count:.1f} ms per point")
    print(f"inside a point, before its first send: median {np.median(lead):.1f} ms, max {max(lead):.1f} ms; "
          f"after its last request: median {np.median(tail):.1f} ms, max {max(tail):.1f} ms")
    per_point_ms = 1000 * between_s / count + float(np.median(lead)) + float(np.median(tail))
    print(f"overhead per point: {per_point_ms:.0f} ms (goal: under 1000 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
