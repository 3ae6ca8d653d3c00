"""`vllm bench serve`, many times in one process: run as a script by the interpreter that has vLLM.

    python vllm_bench_worker.py < requests > replies

Each line in is a JSON list: the arguments of one `vllm bench serve` (what follows `bench serve` on its command
line). Each is parsed by vLLM's own parser and run by vLLM's own `main`, the function the command line calls. For
each, one JSON line goes out: {"ok": true} or {"ok": false, "error": "..."}. vLLM's printing goes to stderr, so
stdout carries only the replies. Importing vLLM takes 15 to 20 s on the GPU host; a comparison that takes turns
pays that once instead of once per round.

This file imports nothing from servelab: vLLM's interpreter need not have it installed.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> int:
    # vLLM prints its arguments, progress and results; the replies get a stdout of their own.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        from vllm.benchmarks.serve import add_cli_args
        from vllm.benchmarks.serve import main as bench_main
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except Exception as error:  # noqa: BLE001 - any import failure is the one reply this worker can give
        traceback.print_exc()
        replies.write(json.dumps({"ok": False, "error": f"cannot import vLLM's benchmark: {error!r}"}) + "\n")
        return 1
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    replies.write(json.dumps({"ok": True, "ready": True}) + "\n")
    for line in sys.stdin:
        try:
            bench_main(parser.parse_args(json.loads(line)))
            reply = {"ok": True}
        except BaseException as error:  # noqa: BLE001 - argparse exits with SystemExit; report and go on
            if isinstance(error, KeyboardInterrupt):
                raise
            traceback.print_exc()
            reply = {"ok": False, "error": repr(error)}
        replies.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
