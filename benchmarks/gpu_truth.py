"""servelab on a real GPU with real vLLM, end to end through its notebooks, checked against `vllm bench serve`.

    python benchmarks/gpu_truth.py params/h100-seed-colocated.yaml --bench tinyllama --concurrency 1 16 64 256

Deploys natively (smallest first) with the memory sampler running, executes 01_deploy, 02_sweep and
03_gpu_memory against those servers, then runs servelab and `vllm bench serve` side by side at the same
load points on the same server (`agreement.csv`), then 04_report, and prints the figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
from servelab.analyse.frames import summary_frame
from servelab.checks.agreement import MODES, compare_with_vllm_bench
from servelab.errors import VllmBenchError
from servelab.report.html import export_report, write_index
from servelab.run import NOTEBOOKS, execute_notebook
from servelab.serve.deploy import stop_on_signals
from servelab.session import lab, open_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params")
    parser.add_argument("--outputs", default="outputs")
    parser.add_argument("--bench", help="deployment to compare with vllm bench serve (default: the first)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--prompts-per-concurrency", type=int, default=8, help="prompts per comparison point: this x concurrency")
    parser.add_argument("--min-prompts", type=int, default=64, help="but at least this many")
    parser.add_argument("--rounds", type=int, default=2, help="the two clients take turns over this many rounds")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="turns: one client after the other; shared: both at once, half the streams each")
    parser.add_argument("--no-bench", action="store_true", help="no comparison with vllm bench serve (another framework)")
    parser.add_argument("--agreement-only", action="store_true", help="deploy and compare; no notebooks, no report")
    parser.add_argument("--skip-sweep", action="store_true", help="only deploy, profile memory and compare")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    params, run_dir = open_run(args.params, None, args.outputs)
    print(f"run folder: {run_dir}", flush=True)
    with stop_on_signals(), lab(params, run_dir) as current:
        for name in [] if args.agreement_only else NOTEBOOKS[:3]:
            if args.skip_sweep and name == "02_sweep":
                continue
            print(f"executing {name}", flush=True)
            execute_notebook(name, run_dir, Path(args.params), Path(args.outputs))
        if not args.agreement_only:
            # A first report before the comparison, so a session cut short still brings one back.
            execute_notebook("04_report", run_dir, Path(args.params), Path(args.outputs))
            export_report(run_dir)
            print("first report written", flush=True)
        agreement = pd.DataFrame()
        server = current.fleet[args.bench or params.deployments[0].name]
        if server.framework != "vllm" and not args.no_bench:
            print(f"no comparison: vllm bench serve is compared on vLLM servers, {server.name} is {server.framework}", flush=True)
        elif not args.no_bench:
            print(f"comparing with vllm bench serve on {server.name}", flush=True)
            try:
                agreement = compare_with_vllm_bench(
                    server, params.sweep, args.concurrency, run_dir, prompts_per_concurrency=args.prompts_per_concurrency,
                    min_prompts=args.min_prompts, python=sys.executable, rounds=args.rounds,
                    modes=tuple(args.modes),
                )
            except VllmBenchError as error:
                print(f"no comparison: {error}", flush=True)
            if not args.agreement_only:
                execute_notebook("04_report", run_dir, Path(args.params), Path(args.outputs))
    if args.agreement_only:
        print(agreement.to_string(index=False))
        return 0
    report = export_report(run_dir)
    write_index(Path(args.outputs))
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(agreement.to_string(index=False))
        summary = summary_frame(run_dir)
        if not summary.empty:
            # each model alone: with the interference points in, the first language's cells would average both
            best = summary[(summary["metric"] == "output_tok_s") & (summary["stat"] == "value") & ~summary["interference"].astype(bool)]
            print(best.pivot_table(index=["deployment", "language"], columns="load_value", values="value").round(0))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
