"""`servelab bench URL --model M`: the quick measurement people make with `vllm bench serve --base-url`, as a
normal servelab run. It builds a params file for one deployment of kind `endpoint` and runs it through
`servelab.run.run`, the code path of `servelab run`, so the run folder, its records and report.html are the same.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from servelab.errors import ParamsError
from servelab.params import NAME_PATTERN, parse_params
from servelab.run import RunResult, run

BENCH_STARTUP_TIMEOUT_S = 30.0
"""How long a bench waits for the URL to answer: the server runs already, so a longer wait means a wrong URL."""


def _name(text: str, fallback: str) -> str:
    """`text` as a params name (NAME_PATTERN): lower case, other characters as '-', at most 48 long."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-._")[:48].rstrip("-._")
    return name if re.fullmatch(NAME_PATTERN, name) else fallback


def bench_params(
    url: str,
    model: str,
    *,
    concurrency: Sequence[int] | None = None,
    rate: Sequence[float] | None = None,
    languages: Sequence[str] = ("en",),
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    api: str = "openai",
    chat: bool = False,
    metrics: str = "none",
    api_key_env: str | None = None,
    requests_per_point: int | None = None,
) -> dict[str, Any]:
    """The params (as data, validated by `parse_params`) of a bench against the server at `url` serving `model`:
    closed loop at each `concurrency`, or Poisson arrivals at each `rate` (req/s); concurrency 1 when neither."""
    if concurrency and rate:
        raise ParamsError("give --concurrency or --rate, not both: one bench measures one kind of load")
    load = {"kind": "poisson", "values": list(rate)} if rate else {"kind": "concurrency", "values": list(concurrency or [1])}
    deployment: dict[str, Any] = {
        "name": _name(model, "endpoint"),
        "model": model,
        "engine": {"kind": "endpoint", "base_url": url, "api": api, "metrics": metrics},
        "startup_timeout_s": BENCH_STARTUP_TIMEOUT_S,
    }
    if api_key_env:
        deployment["secret_env"] = [api_key_env]
    sweep: dict[str, Any] = {"api": "chat" if chat else "completions", "languages": list(languages), "load": [load]}
    for key, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens), ("requests_per_point", requests_per_point)):
        if value is not None:
            sweep[key] = value
    data = {
        "name": _name(f"bench-{model}", "bench"),
        "description": f"servelab bench of {model} at {url}",
        "deployments": [deployment],
        "sweep": sweep,
    }
    parse_params(data, "servelab bench")  # the user's options are named in its errors
    return data


def bench(data: dict[str, Any], outputs_dir: str | Path = "outputs", save_params: str | Path | None = None) -> RunResult:
    """Write the params, run them as `servelab run` does, and keep the params file only when `save_params` names it."""
    if save_params is not None:
        path = Path(save_params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return run(path, outputs_dir=outputs_dir)
    with tempfile.TemporaryDirectory(prefix="servelab-bench-") as folder:
        path = Path(folder) / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return run(path, outputs_dir=outputs_dir)
