"""The client past the engine: servelab's output tok/s against the engine's own generation counter, at high
concurrency, on a server that runs already, with `vllm bench serve` beside it in the same run.

    python3 benchmarks/client_past_engine.py --url http://127.0.0.1:8000 --model tinyllama \\
        --tokenizer /tmp/shapes/tinyllama-1.1b --concurrency 256 512 --client-processes 4 --rounds 2 \\
        --outputs /tmp/gpu-outputs --json /tmp/gpu-outputs/client_past_engine.json

The server is attached as a deployment of kind `endpoint` (`metrics: vllm` by default), through the params and
session path of `servelab bench`: the run folder gets a manifest and params.yaml, and the process listening on
the URL's port is found and its memory sampled (the manifest's `engines` says which process, or why not).
servelab neither starts nor stops the server. Then `servelab.checks.agreement.compare_with_vllm_bench` runs in
mode 'turns': at each concurrency c, max(--min-prompts, --prompts-per-concurrency x c) random-token prompts of
--input-tokens in the model's own tokens (`--tokenizer`), --output-tokens each (greedy, ignore_eos), split over
--rounds rounds in which servelab and `vllm bench serve` take turns, each holding all c streams. servelab's turns
are driven over --client-processes processes pinned one per core (`sweep.client_processes`, the code a sweep
runs: servelab.measure.workers); 'auto' sizes them from this host's `servelab calibrate`.

What "the same window" means. Around each servelab turn the engine's Prometheus /metrics is read twice: once all
the client processes are started and ready (prompts already cut), just before the anchor the first requests
leave at; and again as soon as the last process reports its last request ended, before the records are merged
(`servelab.measure.workers.PointWindow`). The engine's tok/s is its generation counter's rise between those two
readings over the time between them, summed over servelab's rounds (vLLM: vllm:generation_tokens; llama.cpp:
llamacpp:tokens_predicted). servelab's own output tok/s is the output tokens of its successful requests (as the
server counts them in each response) over, per round, the first request's intended send to the last request's
end, summed over rounds: the figure every servelab report shows. The acceptance figure is servelab's tok/s over
the engine's, PASS at 0.99 or more.

Why servelab's figure can sit at or slightly above the counter's. Nothing but servelab's requests runs between
the two readings, and the streams start after the first and end before the second, so the engine's tokens are
servelab's (every request is cut at exactly --output-tokens) while the engine's interval is the longer one: it also
holds the two /metrics reads themselves, the 20 ms anchor lead and the processes' last messages, some tens of ms
over rounds of several seconds. The ratio then equals received/server tokens times (bracket / servelab's window),
a little above 1. It falls below 0.99 where servelab loses tokens the engine generated (failed or cut streams), or
where the client is late to see the end of its streams, stretching its window past the engine's work. Whether the
client drives the engine as hard as vLLM's own client does is the other column: vllm bench's output tok/s, by its
own clock over its own turns.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from servelab.bench import bench_params
from servelab.checks.agreement import compare_with_vllm_bench, read_agreement_turns
from servelab.errors import VllmBenchError
from servelab.measure.workers import ceiling_of_run, processes_for, usable_cpus
from servelab.params import ConcurrencyLoad
from servelab.run import write_params_copy
from servelab.serve.deploy import stop_on_signals
from servelab.session import lab, open_run

PASS_AT = 0.99
"""servelab's output tok/s over the engine's own, over the same window (issue #20, item 4)."""
NAME = "client-past-engine"


def client_processes(text: str) -> int | str:
    return text if text == "auto" else int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the running server, without /v1: http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="the model name its requests carry (--served-model-name)")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="the model folder with its tokenizer files: vllm bench's tokenizer, and servelab's prompts")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--client-processes", type=client_processes, default=4, help="a count, or 'auto' (servelab calibrate)")
    parser.add_argument("--rounds", type=int, default=2, help="the two clients take turns over this many rounds")
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--prompts-per-concurrency", type=int, default=8, help="prompts per client and concurrency: this x c")
    parser.add_argument("--min-prompts", type=int, default=64, help="but at least this many")
    parser.add_argument("--metrics", choices=["vllm", "sglang", "llamacpp"], default="vllm", help="whose /metrics the server serves")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="the run folder is made under it")
    parser.add_argument("--no-vllm-bench", action="store_true", help="servelab's turns only")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def vllm_bench_missing(python: str) -> str | None:
    """Why `vllm bench serve` cannot run in this interpreter, or None when vLLM is importable."""
    if importlib.util.find_spec("vllm") is None:
        return f"vllm is not importable by {python}"
    return None


def _pooled(turns: pd.DataFrame, concurrency: int, client: str, column: str) -> float | None:
    """A client's turns at one concurrency, `column` pooled by requests; None where it has no such turn or figure."""
    rows = turns[(turns["concurrency"] == concurrency) & (turns["client"] == client)].dropna(subset=[column])
    if rows.empty or rows["requests"].sum() == 0:
        return None
    return float((rows[column] * rows["requests"]).sum() / rows["requests"].sum())


def _value(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def result_rows(agreement: pd.DataFrame, turns: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per concurrency: the acceptance figure and what stands beside it."""
    rows = []
    for row in agreement.to_dict("records"):
        concurrency = int(row["concurrency"])
        ratio = _value(row.get("servelab_over_server"))
        rows.append({
            "concurrency": concurrency,
            "requests_per_client": int(row["prompts"]),
            "rounds": int(row["rounds"]),
            "servelab_output_tok_s": _value(row["servelab_output_tok_s"]),
            "engine_output_tok_s": _value(row["server_output_tok_s"]),
            "servelab_over_engine": ratio,
            "received_over_server": _value(row["received_over_server"]),
            "vllm_bench_output_tok_s": _value(row["vllm_bench_output_tok_s"]),
            "servelab_mean_ttft_ms": _value(row["servelab_mean_ttft_ms"]),
            "vllm_bench_mean_ttft_ms": _value(row["vllm_bench_mean_ttft_ms"]),
            "servelab_mean_tpot_ms": _value(row["servelab_mean_tpot_ms"]),
            "vllm_bench_mean_tpot_ms": _value(row["vllm_bench_mean_tpot_ms"]),
            "engine_mean_ttft_ms_in_servelab_turns": _pooled(turns, concurrency, "servelab", "engine_mean_ttft_ms"),
            "engine_mean_tpot_ms_in_servelab_turns": _pooled(turns, concurrency, "servelab", "engine_mean_tpot_ms"),
            "engine_mean_ttft_ms_in_vllm_bench_turns": _pooled(turns, concurrency, "vllm-bench", "engine_mean_ttft_ms"),
            "engine_mean_tpot_ms_in_vllm_bench_turns": _pooled(turns, concurrency, "vllm-bench", "engine_mean_tpot_ms"),
            "passed": ratio is not None and ratio >= PASS_AT,
        })
    return rows


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(row: dict[str, Any], processes: int) -> str:
    """One concurrency's figures as a small table, servelab, the engine and vllm bench side by side."""
    verdict = "PASS" if row["passed"] else "FAIL" if row["servelab_over_engine"] is not None else "FAIL (no engine counter)"
    lines = [
        f"concurrency {row['concurrency']}: {row['requests_per_client']} requests per client over {row['rounds']} rounds, "
        f"servelab over {processes} client processes",
        f"  {'':34}{'servelab':>12}{'engine':>12}{'vllm bench':>12}",
        f"  {'output tok/s':34}{_f(row['servelab_output_tok_s']):>12}{_f(row['engine_output_tok_s']):>12}"
        f"{_f(row['vllm_bench_output_tok_s']):>12}",
        f"  {'mean TTFT ms (servelab turns)':34}{_f(row['servelab_mean_ttft_ms'], 2):>12}"
        f"{_f(row['engine_mean_ttft_ms_in_servelab_turns'], 2):>12}",
        f"  {'mean TTFT ms (vllm bench turns)':34}{'':>12}{_f(row['engine_mean_ttft_ms_in_vllm_bench_turns'], 2):>12}"
        f"{_f(row['vllm_bench_mean_ttft_ms'], 2):>12}",
        f"  {'mean TPOT ms (servelab turns)':34}{_f(row['servelab_mean_tpot_ms'], 3):>12}"
        f"{_f(row['engine_mean_tpot_ms_in_servelab_turns'], 3):>12}",
        f"  {'mean TPOT ms (vllm bench turns)':34}{'':>12}{_f(row['engine_mean_tpot_ms_in_vllm_bench_turns'], 3):>12}"
        f"{_f(row['vllm_bench_mean_tpot_ms'], 3):>12}",
        f"  received / server tokens: {_f(row['received_over_server'], 4)}",
        f"  servelab tok/s / engine tok/s over the same window: {_f(row['servelab_over_engine'], 4)}  "
        f"{verdict} (at least {PASS_AT})",
    ]
    return "\n".join(lines)


def endpoint_params(args: argparse.Namespace) -> dict[str, Any]:
    """The params of the run, as `servelab bench` makes them, with the client processes and concurrencies asked."""
    data = bench_params(args.url, args.model, concurrency=args.concurrency, input_tokens=args.input_tokens,
                        output_tokens=args.output_tokens, metrics=args.metrics)
    data["name"] = NAME
    data["description"] = f"servelab's output tok/s against the engine's own counter at {args.url} ({args.model})"
    data["sweep"]["client_processes"] = args.client_processes
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per /metrics reading otherwise
    if not args.tokenizer.is_dir():
        print(f"--tokenizer {args.tokenizer}: no such folder; give the model folder that holds tokenizer.json", file=sys.stderr)
        return 2
    if not (args.tokenizer / "tokenizer.json").is_file():
        print(f"--tokenizer {args.tokenizer} has no tokenizer.json: servelab's prompts are cut by the server's /tokenize "
              f"(or their lengths estimated)", flush=True)
    use_bench = not args.no_vllm_bench
    if use_bench and (why := vllm_bench_missing(sys.executable)):
        print(f"{why}: going on without vllm bench serve", flush=True)
        use_bench = False

    with tempfile.TemporaryDirectory(prefix="servelab-client-past-engine-") as folder:
        params_path = Path(folder) / f"{NAME}.yaml"
        params_path.write_text(yaml.safe_dump(endpoint_params(args), sort_keys=False), encoding="utf-8")
        params, run_dir = open_run(params_path, None, args.outputs)
    write_params_copy(params, run_dir)
    print(f"run folder: {run_dir}", flush=True)
    deployment = params.deployments[0].name
    with stop_on_signals(), lab(params, run_dir) as current:
        # The endpoint's model folder is the one the user names: vllm bench's tokenizer, and the prompts' tokens.
        server = dataclasses.replace(current.fleet[deployment], model_path=str(args.tokenizer))
        print(f"server: {server.base_url} ({server.version}); memory: {server.listener}", flush=True)

        def compare(with_bench: bool) -> pd.DataFrame:
            return compare_with_vllm_bench(
                server, params.sweep, args.concurrency, run_dir, prompts_per_concurrency=args.prompts_per_concurrency,
                min_prompts=args.min_prompts, python=sys.executable, rounds=args.rounds, modes=("turns",), vllm_bench=with_bench,
            )

        try:
            agreement = compare(use_bench)
        except VllmBenchError as error:
            if not use_bench:
                raise
            print(f"vllm bench serve did not start ({error}): going on without it", flush=True)
            use_bench = False
            agreement = compare(False)
    rows = result_rows(agreement, read_agreement_turns(run_dir))
    ceiling, cores = ceiling_of_run(run_dir), len(usable_cpus())
    for row in rows:
        load = ConcurrencyLoad(values=(row["concurrency"],))
        row["client_processes"] = processes_for(args.client_processes, load, row["concurrency"], args.output_tokens, ceiling, cores)
    print()
    for row in rows:
        print(table(row, row["client_processes"]))
        print()
    for row in rows:
        ratio = row["servelab_over_engine"]
        print(f"c={row['concurrency']}: servelab/engine {_f(ratio, 4)} -> {'PASS' if row['passed'] else 'FAIL'}")
    print(f"run folder: {run_dir} (agreement.csv, agreement_turns.csv, agreement_requests.jsonl"
          f"{', vllm-bench/' if use_bench else ''})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "url": args.url, "model": args.model, "tokenizer": str(args.tokenizer), "client_processes": args.client_processes,
            "input_tokens": args.input_tokens, "output_tokens": args.output_tokens, "vllm_bench": use_bench,
            "pass_at": PASS_AT, "run_dir": str(run_dir), "server": {"version": server.version, "memory": server.listener},
            "rows": rows,
        }, indent=2))
    return 0 if rows and all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
