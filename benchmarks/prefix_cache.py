"""The prefix cache's effect on TTFT: the real llama-server (SmolLM2-135M on the CPU), prompts of the same length
with and without a shared system prompt, measured side by side in one run (the two workloads alternate, round by
round, on the same server).

    .venv/bin/python benchmarks/prefix_cache.py [--prefix-tokens 256] [--question-tokens 16] [--requests 6] [--rounds 2]

`shared_prefix`: every request is the same `--prefix-tokens` system prompt, then its own question. `synthetic`: every
prompt unique from its first token, `--prefix-tokens + --question-tokens` long. Concurrency 1 and one server slot,
so each request finds the previous one's KV cache. It prints TTFT per workload and the server's own counts
(`timings.cache_n`, the prompt tokens it took from its cache, and `prompt_ms`, its prefill time).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np
from servelab.analyse.metrics import ttft_ms
from servelab.measure.clients import Target
from servelab.measure.load import make_client, run_point
from servelab.measure.sweep import prompt_tokenizer
from servelab.measure.workloads import build_workload
from servelab.params import parse_params
from servelab.records import RequestRecord
from servelab.serve.deploy import deploy


def params_for(workload: dict, input_tokens: int, requests: int) -> object:
    return parse_params(
        {
            "name": "prefix-cache",
            "deployments": [
                {
                    "name": "smollm2",
                    "model": "smollm2",
                    "engine": {"kind": "llamacpp", "parallel_slots": 1, "ctx_size": 2048},
                    "startup_timeout_s": 180,
                }
            ],
            "sweep": {
                "languages": ["en"],
                "input_tokens": input_tokens,
                "output_tokens": 4,
                "load": [{"kind": "concurrency", "values": [1]}],
                "requests_per_point": requests,
                "warmup_requests": 1,
                "request_timeout_s": 120,
                "workload": workload,
            },
        },
        "<prefix_cache>",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix-tokens", type=int, default=256)
    parser.add_argument("--question-tokens", type=int, default=16)
    parser.add_argument("--requests", type=int, default=6, help="measured requests per workload and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    shared = params_for({"kind": "shared_prefix", "prefix_tokens": args.prefix_tokens}, args.question_tokens, args.requests)
    unique = params_for({"kind": "synthetic"}, args.prefix_tokens + args.question_tokens, args.requests)
    records: dict[str, list[RequestRecord]] = {"shared_prefix": [], "synthetic": []}
    with tempfile.TemporaryDirectory() as folder, deploy(shared, Path(folder)) as fleet:  # type: ignore[arg-type]
        server = fleet["smollm2"]
        tokenizer = prompt_tokenizer(server)
        target = Target.for_server(server)
        for round_index in range(args.rounds):
            for name, params in (("shared_prefix", shared), ("synthetic", unique)):
                sweep = params.sweep  # type: ignore[attr-defined]
                count = sweep.requests_per_point + sweep.warmup_requests
                prompts = build_workload(sweep, "en", count=count, seed=round_index, tokenizer=tokenizer, salt=name)

                async def point(prompts=prompts, sweep=sweep, name=name, point_id=f"{name}-{round_index}") -> None:
                    async with make_client(1) as client:
                        await run_point(client, target, prompts, sweep.load[0], 1, sweep, point_id, records[name].append)

                asyncio.run(point())
                print(f"round {round_index + 1}/{args.rounds}: {name} done", file=sys.stderr, flush=True)
    print(f"llama-server, SmolLM2-135M, 1 slot, concurrency 1; {args.rounds} rounds x {args.requests} requests per workload")
    print(f"{'workload':<14} {'prompt tok':>10} {'TTFT p50 ms':>12} {'TTFT mean ms':>13} {'cache_n mean':>13} {'prompt_ms mean':>15}")
    medians = {}
    for name, found in records.items():
        measured = [r for r in found if not r.warmup and r.ok]
        ttfts = [t for t in map(ttft_ms, measured) if t is not None]
        cached = [r.server_timings.get("cache_n", 0) for r in measured if r.server_timings]
        prefill = [r.server_timings.get("prompt_ms", 0.0) for r in measured if r.server_timings]
        prompt_tokens = np.mean([r.prompt_tokens or 0 for r in measured])
        medians[name] = float(np.median(ttfts))
        print(
            f"{name:<14} {prompt_tokens:>10.0f} {np.median(ttfts):>12.1f} {np.mean(ttfts):>13.1f} "
            f"{np.mean(cached):>13.1f} {np.mean(prefill):>15.1f}"
        )
    print(f"median TTFT, synthetic / shared_prefix: {medians['synthetic'] / medians['shared_prefix']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
