"""`servelab`: a thin command line over the library. Errors print as one clear message; --debug shows tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from servelab.errors import ServelabError

log = logging.getLogger("servelab")


def _run(args: argparse.Namespace) -> int:
    from servelab.params import load_params
    from servelab.run import describe_grid, run

    if args.dry_run:
        print(describe_grid(load_params(args.params)))
        return 0
    result = run(args.params, outputs_dir=args.outputs, resume=args.resume)
    print(f"run folder: {result.run_dir}")
    print(f"report: {result.report}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from servelab.params import load_params

    for path in args.params:
        params = load_params(path)
        print(f"{path}: ok ({len(params.deployments)} deployment(s))")
    return 0


def _compose(args: argparse.Namespace) -> int:
    from servelab.compose import write_compose
    from servelab.params import load_params

    written = write_compose(load_params(args.params), Path(args.params), Path(args.out))
    print(written)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from servelab.compare import compare_runs

    print(compare_runs([Path(r) if Path(r).is_dir() else Path(args.outputs) / r for r in args.runs]).to_string())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from servelab.calibrate import calibrate, format_calibration

    print(format_calibration(calibrate(cores=args.cores, quick=args.quick)))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from servelab.params import load_params
    from servelab.planner import format_plan, plan

    print(format_plan(plan(load_params(args.params), total_mib=args.total_mib)))
    return 0


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
    run.add_argument("--dry-run", action="store_true", help="print the grid and an estimated duration, run nothing")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check params files against the schema")
    validate.add_argument("params", nargs="+")
    validate.set_defaults(handler=_validate)

    compose = commands.add_parser("compose", help="generate compose/<params>.yaml from a params file")
    compose.add_argument("params")
    compose.add_argument("--out", default="compose")
    compose.set_defaults(handler=_compose)

    compare = commands.add_parser("compare", help="put runs side by side")
    compare.add_argument("runs", nargs=2, metavar="RUN")
    compare.add_argument("--outputs", default="outputs")
    compare.set_defaults(handler=_compare)

    calibrate = commands.add_parser("calibrate", help="measure this client's ceiling against the reference emitter")
    calibrate.add_argument("--cores", type=int, default=1)
    calibrate.add_argument("--quick", action="store_true")
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
    except KeyboardInterrupt:
        print("servelab: interrupted; completed requests are on disk, continue with --resume RUN_ID", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
