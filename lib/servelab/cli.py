"""`servelab`: a thin command line over the library. Errors print as one clear message; --debug shows tracebacks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from servelab.errors import ServelabError

log = logging.getLogger("servelab")
RUN_FAILED = 1
"""Exit status of a run that finished but failed as a whole (error rate above policy.max_error_rate)."""
DOES_NOT_FIT = 1
"""Exit status of `servelab plan` when the deployments do not fit the GPU."""


def _run(args: argparse.Namespace) -> int:
    from servelab.params import load_params
    from servelab.preflight import check_memory, check_prompts_file, check_total_mib
    from servelab.run import NOTEBOOK_DIR, describe_grid, run

    total_mib = check_total_mib(args.total_mib)
    if args.dry_run and args.cluster:
        from servelab.cluster import describe_groups

        print(describe_groups(load_params(args.params), args.gpu_resource))
        return 0
    if args.dry_run:
        params = load_params(args.params)
        print(describe_grid(params))
        check_prompts_file(params, args.params, also_from=NOTEBOOK_DIR)
        memory = check_memory(params, total_mib)
        print(memory if memory is not None else "memory: not checked (no GPU here; --total-mib N checks against N MiB)")
        return 0
    if args.cluster:
        from servelab.cluster import run_on_cluster

        result = run_on_cluster(args.params, args.cluster, args.outputs, args.resume, args.gpu_resource)
    else:
        result = run(args.params, outputs_dir=args.outputs, resume=args.resume, total_mib=total_mib)
    print(f"run folder: {result.run_dir}")
    print(f"report: {result.report}")
    if result.failure:
        print(f"servelab: the run failed: {result.failure}", file=sys.stderr)
        return RUN_FAILED
    return 0


def _bench(args: argparse.Namespace) -> int:
    from servelab.bench import bench, bench_params

    data = bench_params(
        args.url, args.model, concurrency=args.concurrency, rate=args.rate, languages=args.languages,
        input_tokens=args.input_tokens, output_tokens=args.output_tokens, api=args.api, chat=args.chat,
        metrics=args.metrics, api_key_env=args.api_key_env, requests_per_point=args.requests,
    )
    saved = (args.save_params or f"{data['name']}.yaml") if args.save_params is not None else None
    result = bench(data, outputs_dir=args.outputs, save_params=saved)
    if saved is not None:
        print(f"params: {saved}")
    print(f"run folder: {result.run_dir}")
    print(f"report: {result.report}")


def _search(args: argparse.Namespace) -> int:
    from servelab.checks.search import SEARCH_FILE, knee_table
    from servelab.run import search

    run_dir = search(args.params, outputs_dir=args.outputs)
    print(knee_table(run_dir).to_string(index=False))
    print(f"run folder: {run_dir} (summary.csv has goodput_req_s per step; {SEARCH_FILE} the knee)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from servelab.run import reanalyse

    print(f"report: {reanalyse(Path(args.run_dir), Path(args.outputs))}")
    return 0


def _lab(args: argparse.Namespace) -> int:
    from servelab import lab

    if args.action == "stop":
        stopped = lab.close(args.params, args.outputs)
        print(f"lab of {args.params}: {'stopped' if stopped else 'was not running'}")
    else:
        print(lab.status(args.params, args.outputs).to_string(index=False))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from servelab.params import load_params
    from servelab.preflight import check_prompts_file

    for path in args.params:
        params = load_params(path)
        check_prompts_file(params, path)
        print(f"{path}: ok ({len(params.deployments)} deployment(s))")
    return 0


def _compose(args: argparse.Namespace) -> int:
    from servelab.params import load_params
    from servelab.serve.compose import write_compose

    written = write_compose(load_params(args.params), Path(args.params), Path(args.out))
    print(written)
    return 0


def _run_path(value: str, outputs: str) -> Path:
    """A run given as a path (a folder, a summary.csv, a result file) or as a run id under `outputs`."""
    return Path(value) if Path(value).exists() else Path(outputs) / value


def _compare(args: argparse.Namespace) -> int:
    from servelab.checks.compare import compare_runs

    if len(args.runs) < 2:
        raise ServelabError(f"compare needs two runs or more, got {len(args.runs)}: servelab compare RUN RUN [RUN ...]")
    runs = [_run_path(r, args.outputs) for r in args.runs]
    if args.html:
        from servelab.report.frameworks import framework_text, write_framework_page

        written = write_framework_page(runs, Path(args.html))
        print(framework_text(runs))
        print(f"framework table: {written}")
        return 0
    print(compare_runs(runs).to_string())
    return 0


def _export(args: argparse.Namespace) -> int:
    from servelab.checks.interop import export_guidellm, export_vllm_bench

    run_dir = _run_path(args.run, args.outputs)
    if args.format == "guidellm":
        written_report = export_guidellm(run_dir, Path(args.out) if args.out else run_dir / "guidellm-benchmarks.json")
        print(f"the run written as a GuideLLM benchmarks report to {written_report}")
        return 0
    out = Path(args.out) if args.out else run_dir / "vllm-bench-format"
    written = export_vllm_bench(run_dir, out)
    print(f"{len(written)} load point(s) written as `vllm bench serve` result JSON to {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    import pandas as pd

    from servelab.checks.interop import import_results

    frames = [
        import_results(Path(path), deployment=args.deployment, framework=args.framework, model=args.model, language=args.language)
        for path in args.files
    ]
    table = pd.concat(frames, ignore_index=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"{len(table)} rows from {len(args.files)} file(s) written to {args.out}; `servelab compare {args.out} RUN` sets it beside a run")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from servelab.checks.calibrate import CACHE_FILE, calibrate, format_calibration

    print(format_calibration(calibrate(cores=args.cores, quick=args.quick)))
    print(f"saved to {CACHE_FILE}; new runs on this host record it in manifest.json")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from servelab.observe.nvml import device_total_mib
    from servelab.params import load_params
    from servelab.preflight import check_total_mib
    from servelab.serve.planner import devices_of, format_plan, format_plans, plan, plan_per_device

    params = load_params(args.params)
    total_mib = check_total_mib(args.total_mib)
    if total_mib is None:
        total_mib = device_total_mib(params.memory.device_index)
    if len(devices_of(params)) > 1:
        plans = plan_per_device(params, total_mib=total_mib)
        print(format_plans(plans))
        return 0 if all(result.fits for result in plans.values()) else DOES_NOT_FIT
    result = plan(params, total_mib=total_mib)
    print(format_plan(result))
    return 0 if result.fits else DOES_NOT_FIT


def _schema(args: argparse.Namespace) -> int:
    from servelab import schema_doc

    if args.write:
        schema_doc.write(Path(args.write))
        print(f"updated {args.write}")
    else:
        print(schema_doc.reference())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servelab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="deploy, sweep, profile memory and report, through the notebooks")
    run.add_argument("params", help="a params YAML file, e.g. params/demo.yaml")
    run.add_argument("--outputs", default="outputs", help="where run folders go (default: outputs)")
    run.add_argument("--resume", metavar="RUN_ID", help="complete an interrupted run instead of starting a new one")
    run.add_argument("--dry-run", action="store_true", help="print the grid, an estimated duration and the memory plan, run nothing")
    run.add_argument("--total-mib", type=float, default=None, help="check the memory plan against this GPU size; default: the local GPU's")
    run.add_argument(
        "--cluster", metavar="ADDRESS",
        help="run each co-location group as a Ray task on a node of this Ray cluster (host:port, or auto); needs .[cluster]",
    )
    run.add_argument(
        "--gpu-resource", default="GPU", metavar="NAME",
        help="the Ray resource a group asks for, one per GPU it uses (default GPU; a custom resource stands in on CPU nodes)",
    )
    run.set_defaults(handler=_run)

    bench = commands.add_parser("bench", help="measure a server that runs already, at URL; writes a run folder and report")
    bench.add_argument("url", help="where it answers, without /v1: http://127.0.0.1:8000")
    bench.add_argument("--model", required=True, help="the model name requests carry")
    load = bench.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, nargs="+", metavar="N", help="closed loop at each level (default 1)")
    load.add_argument("--rate", type=float, nargs="+", metavar="REQ_S", help="Poisson arrivals at each rate, req/s")
    bench.add_argument("--languages", nargs="+", default=["en"], help="prompt sets: en ko zh ja es random")
    bench.add_argument("--input-tokens", type=int, help="prompt length, tokens (default 128)")
    bench.add_argument("--output-tokens", type=int, help="max_tokens of every request (default 64)")
    bench.add_argument("--requests", type=int, help="measured requests per load point (default 32)")
    bench.add_argument("--api", choices=["openai", "ollama"], default="openai", help="the API the server speaks")
    bench.add_argument("--chat", action="store_true", help="chat completions instead of completions")
    bench.add_argument("--metrics", choices=["vllm", "sglang", "llamacpp", "none"], default="none",
                       help="whose /metrics counters the server has, to check the client against it")
    bench.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key (sent as a bearer token)")
    bench.add_argument("--outputs", default="outputs", help="where the run folder goes (default: outputs)")
    bench.add_argument("--save-params", nargs="?", const="", metavar="PATH",
                       help="keep the generated params file (default path: ./<name>.yaml)")
    bench.set_defaults(handler=_bench)

    search = commands.add_parser(
        "search", help="find the highest load meeting the params' slo: raise it step by step (params `search`)"
    )
    search.add_argument("params", help="a params YAML file with `slo` (and optionally `search`)")
    search.add_argument("--outputs", default="outputs", help="where run folders go (default: outputs)")
    search.set_defaults(handler=_search)

    report = commands.add_parser(
        "report", help="analyse a recorded run folder again (memory and report notebooks) and export its HTML; starts nothing"
    )
    report.add_argument("run_dir", help="outputs/<run-id>, e.g. a run brought back from a GPU machine")
    report.add_argument("--outputs", default="outputs")
    report.set_defaults(handler=_report)

    lab = commands.add_parser("lab", help="the live lab the notebooks share: show it, or stop its servers")
    lab.add_argument("action", choices=("status", "stop"))
    lab.add_argument("params", help="the params file the lab runs, e.g. params/demo.yaml")
    lab.add_argument("--outputs", default="outputs", help="where its run folders go (default: outputs)")
    lab.set_defaults(handler=_lab)

    validate = commands.add_parser("validate", help="check params files against the schema")
    validate.add_argument("params", nargs="+")
    validate.set_defaults(handler=_validate)

    compose = commands.add_parser("compose", help="generate compose/<params>.yaml from a params file")
    compose.add_argument("params")
    compose.add_argument("--out", default="compose")
    compose.set_defaults(handler=_compose)

    compare = commands.add_parser("compare", help="put runs side by side (run folders, run ids, summary.csv, or vllm bench / GuideLLM JSON)")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    compare.add_argument("--outputs", default="outputs")
    compare.add_argument("--html", metavar="OUT", help="also write the framework table (frameworks, models, settings side by side) to this HTML file")
    compare.set_defaults(handler=_compare)

    export = commands.add_parser("export", help="write a run's load points as `vllm bench serve` result JSON or a GuideLLM report")
    export.add_argument("run", metavar="RUN", help="a run folder or run id")
    export.add_argument("--out", help="folder to write to (default: RUN/vllm-bench-format), or guidellm's file (RUN/guidellm-benchmarks.json)")
    export.add_argument("--format", choices=("vllm", "guidellm"), default="vllm", help="vllm: one `vllm bench serve` JSON per point; guidellm: one GuideLLM report")
    export.add_argument("--outputs", default="outputs")
    export.set_defaults(handler=_export)

    importer = commands.add_parser("import", help="read vllm bench serve, SGLang bench_serving, GuideLLM, AIPerf or llmperf results into servelab's summary table")
    importer.add_argument("files", nargs="+", metavar="FILE")
    importer.add_argument("--out", required=True, help="the summary CSV to write")
    for key in ("deployment", "framework", "model", "language"):
        importer.add_argument(f"--{key}", help=f"set {key} for every point, over what the files say")
    importer.set_defaults(handler=_import)

    calibrate = commands.add_parser("calibrate", help="measure this client's ceiling against the reference emitter")
    calibrate.add_argument("--cores", type=int, default=1, help="CPUs the client is pinned to (default 1)")
    calibrate.add_argument("--quick", action="store_true", help="fewer, shorter levels: about 15 s instead of a minute")
    calibrate.set_defaults(handler=_calibrate)

    schema = commands.add_parser("schema", help="print the params reference generated from the schema")
    schema.add_argument("--write", metavar="README", help="rewrite the generated part of this file (params/README.md)")
    schema.set_defaults(handler=_schema)

    plan = commands.add_parser("plan", help="predict each deployment's GPU memory and whether they fit")
    plan.add_argument("params")
    plan.add_argument("--total-mib", type=float, default=None, help="GPU size; default: the local GPU's")
    plan.set_defaults(handler=_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpcore", "papermill", "traitlets"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ServelabError as error:
        if args.debug:
            raise
        print(f"servelab: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        run_dir = getattr(interrupt, "run_dir", None)
        resume = f"`servelab run {args.params} --resume {run_dir.name}`" if run_dir is not None else "--resume RUN_ID"
        print(f"servelab: interrupted; completed requests are on disk, continue with {resume}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`servelab compare A B | head`): not an error of ours, and nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
