"""The grid of load points, run one after another inside one process, with every request kept on disk.

A point is one deployment (or, for the interference point, all of them at once) x one language x one load
value. Each point is marked in `points.jsonl` when it starts and when it ends; its requests are appended to
`requests.jsonl` as they complete and fsynced before the next point starts. A point that did not end (a crash,
SIGINT, a dead engine) is run again by `--resume`, after its partial requests are dropped, so every point
appears in `requests.jsonl` exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from servelab.aio import run_sync
from servelab.clock import now_ns
from servelab.errors import EngineError
from servelab.manifest import update_manifest
from servelab.measure import load as load_module
from servelab.measure import workers
from servelab.measure.clients import Target
from servelab.measure.prompts import Prompt
from servelab.measure.tokens import JsonTokenizer, ServerTokenizer, local_tokenizer
from servelab.measure.workloads import build_workload, describe_workload
from servelab.params import ConcurrencyLoad, LoadParams, Params, Sweep
from servelab.records import (
    LOADED_MODELS_FILE,
    MANIFEST_FILE,
    POINTS_FILE,
    REQUESTS_FILE,
    JsonlWriter,
    LoadedModelRecord,
    PointRecord,
    RequestRecord,
    latest_points,
    read_jsonl,
    read_requests,
    rewrite_jsonl,
)
from servelab.serve.deploy import Fleet, RunningServer, api_key_headers
from servelab.serve.engines import adapter_for_kind

log = logging.getLogger(__name__)
FINISHED = ("done", "failed")
UNCAPPED_OPEN_LOOP = 1024
"""Connections sized for an open-loop point without max_concurrency."""


@dataclass(frozen=True)
class LoadPoint:
    """One cell of the grid: who, in which language, under which typed load entry of the sweep at which value."""

    deployments: tuple[str, ...]
    language: str
    load: LoadParams
    load_value: float

    @property
    def load_kind(self) -> str:
        return self.load.kind

    @property
    def max_concurrency(self) -> int:
        """The most requests this point keeps in flight per deployment (open loop: its cap, else 1024)."""
        if isinstance(self.load, ConcurrencyLoad):
            return int(self.load_value)
        return self.load.max_concurrency or UNCAPPED_OPEN_LOOP

    @property
    def interference(self) -> bool:
        return len(self.deployments) > 1

    def point_id(self, deployment: str) -> str:
        together = "/together" if self.interference else ""
        return f"{deployment}/{self.language}/{self.load_kind}-{self.load_value:g}{together}"

    @property
    def label(self) -> str:
        who = "all" if self.interference else self.deployments[0]
        return f"{who}/{self.language}/{self.load_kind}-{self.load_value:g}"


def plan_points(params: Params) -> list[LoadPoint]:
    """Every deployment alone (the others idle), then, with several deployments, all of them at once."""
    names = tuple(d.name for d in params.deployments)
    points = [
        LoadPoint((name,), language, load, float(value))
        for name in names
        for language in params.sweep.languages
        for load in params.sweep.load
        for value in load.values
    ]
    if len(names) > 1:
        points += [
            LoadPoint(names, params.sweep.languages[0], load, float(value))
            for load in params.sweep.load
            for value in load.values
        ]
    return points


def estimate_seconds(params: Params, seconds_per_request: float = 0.5) -> float:
    """A rough duration for --dry-run: requests over concurrency times a per-request guess."""
    total = 0.0
    for point in plan_points(params):
        if params.sweep.duration_s is not None:
            total += params.sweep.duration_s
            continue
        count = (params.sweep.requests_per_point or 0) + params.sweep.warmup_requests
        if point.load_kind == "concurrency":
            total += count / point.load_value * seconds_per_request
        else:
            total += count / point.load_value
    return total


def drop_unfinished(run_dir: Path) -> list[str]:
    """Remove the requests of points that started but never finished; returns their point ids."""
    points = latest_points(run_dir)
    unfinished = {pid for pid, point in points.items() if point.status not in FINISHED}
    if unfinished:
        rows = [row for row in read_jsonl(run_dir / REQUESTS_FILE) if row.get("point_id") not in unfinished]
        rewrite_jsonl(run_dir / REQUESTS_FILE, rows)
    return sorted(unfinished)


def connections_needed(params: Params) -> int:
    """The most connections any point of the grid opens at once (the interference point sums its deployments)."""
    return max(point.max_concurrency * len(point.deployments) for point in plan_points(params))


def prompt_count(point: LoadPoint, params: Params) -> int:
    """Distinct prompts for one point: one per request where the count is known, else enough that a server's
    prefix cache rarely sees a prompt twice within a timed point."""
    if params.sweep.duration_s is None:
        return int(params.sweep.requests_per_point or 1)
    if point.load_kind == "concurrency":
        return max(64, int(point.load_value) * 16)
    return max(64, int(point.load_value * params.sweep.duration_s * 1.25))


def prompt_tokenizer(server: RunningServer) -> JsonTokenizer | ServerTokenizer | None:
    """What cuts this server's prompts to length: the tokenizer.json in its model folder, else the server's own
    /tokenize, else None (lengths estimated from characters, and the report warns when they come out far off)."""
    local = local_tokenizer(server.model_path)
    if local is not None or server.tokenize_flavour is None:
        return local
    remote = ServerTokenizer(server.base_url, flavour=server.tokenize_flavour, model=server.served_model)  # type: ignore[arg-type]
    try:
        _, counted = remote.prefix("servelab cuts prompts in the server's own tokens", 2)
        if counted != 2:
            raise RuntimeError(f"a 2-token prefix counted {counted}")
    except (httpx.HTTPError, RuntimeError, ValueError) as error:
        log.info("%s: no usable /tokenize and /detokenize (%s); prompt lengths are estimated", server.name, error)
        remote.close()
        return None
    return remote


@contextlib.contextmanager
def prompt_tokenizers(servers: Iterable[RunningServer]) -> Iterator[dict[str, JsonTokenizer | ServerTokenizer | None]]:
    """Each server's prompt tokenizer (`prompt_tokenizer`), found once for a whole sweep and closed after it."""
    tokenizers = {server.name: prompt_tokenizer(server) for server in servers}
    try:
        yield tokenizers
    finally:
        for tokenizer in tokenizers.values():
            if isinstance(tokenizer, ServerTokenizer):
                tokenizer.close()


def prompts_for(
    server: RunningServer, sweep: Sweep, language: str, count: int, seed: int,
    tokenizer: JsonTokenizer | ServerTokenizer | None,
) -> list[Prompt]:
    """A point's prompts, cut by `tokenizer` where there is one; estimated if it fails."""
    build = functools.partial(build_workload, sweep, language, count=count, seed=seed)
    try:
        return build(tokenizer=tokenizer)
    except (httpx.HTTPError, RuntimeError, ValueError) as error:
        log.warning("%s: its tokenizer failed while cutting prompts (%s); lengths are estimated", server.name, error)
        return build()


async def _run_point(
    point: LoadPoint, params: Params, fleet: Fleet, writer: JsonlWriter, point_seed: int,
    tokenizers: Mapping[str, JsonTokenizer | ServerTokenizer | None],
    ceiling: workers.ClientCeiling | None = None,
) -> list[load_module.PointOutcome]:
    servers = [fleet[name] for name in point.deployments]
    connections = point.max_concurrency * len(servers)
    async with load_module.make_client(connections) as client:
        jobs = []
        count = prompt_count(point, params) + params.sweep.warmup_requests
        for offset, server in enumerate(servers):
            prompts = prompts_for(server, params.sweep, point.language, count, point_seed + offset, tokenizers[server.name])
            jobs.append(
                workers.drive_point(
                    client,
                    Target.for_server(server),
                    prompts,
                    point.load,
                    point.load_value,
                    params.sweep,
                    point.point_id(server.name),
                    writer.write,
                    parts_dir=writer.path.parent / workers.PARTS_DIR,
                    ceiling=ceiling,
                    first_cpu=offset,
                )
            )
        return list(await asyncio.gather(*jobs))


def loaded_models_records(server: RunningServer, point_id: str, fleet: Fleet | None = None) -> list[LoadedModelRecord]:
    """The models `server` holds now and their memory, by its own list (Ollama's /api/ps), each with the deployment
    of `fleet` that uses it (one `ollama serve` may hold the models of several); [] where it keeps no such list or
    does not answer (logged: a missing list is no reason to stop a run)."""
    if server.loaded_models_path is None:
        return []
    try:
        response = httpx.get(server.base_url + server.loaded_models_path, headers=api_key_headers(server.api_key_env), timeout=10.0)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError) as error:
        log.warning("%s: no list of loaded models from %s (%s)", server.name, server.loaded_models_path, error)
        return []
    t_ns = now_ns()
    users = {s.served_model: s.name for s in (fleet or ()) if s.base_url == server.base_url}
    return [
        LoadedModelRecord(point_id, server.name, t_ns, model.name, round(model.size_mib, 1), round(model.vram_mib, 1),
                          model.spilled, users.get(model.name))
        for model in adapter_for_kind(server.framework).loaded_models(body)
    ]


def _point_record(point: LoadPoint, server: RunningServer, status: str, start_ns: int) -> PointRecord:
    return PointRecord(
        point_id=point.point_id(server.name),
        deployment=server.name,
        framework=server.framework,
        model=server.model,
        language=point.language,
        load_kind=point.load_kind,
        load_value=point.load_value,
        status=status,
        start_ns=start_ns,
        interference=point.interference,
    )


def run_sweep(params: Params, run_dir: Path, fleet: Fleet, progress: bool = True) -> None:
    """Run every point not yet finished in this run, every request on disk (`servelab.analyse.summary` sums them up)."""
    if (run_dir / MANIFEST_FILE).is_file():
        update_manifest(run_dir, workload=describe_workload(params.sweep))
    dropped = drop_unfinished(run_dir)
    if dropped:
        log.warning("re-running %d unfinished point(s): %s", len(dropped), ", ".join(dropped))
    finished = {pid for pid, p in latest_points(run_dir).items() if p.status in FINISHED}
    todo = [
        (index, point)
        for index, point in enumerate(plan_points(params))
        if not all(point.point_id(name) in finished for name in point.deployments)
    ]
    load_module.ensure_file_descriptors(connections_needed(params))
    ceiling = workers.ceiling_of_run(run_dir)
    deployments = sorted({name for _, point in todo for name in point.deployments})
    with (
        JsonlWriter(run_dir / REQUESTS_FILE) as writer,
        JsonlWriter(run_dir / POINTS_FILE, fsync_every=1) as marks,
        JsonlWriter(run_dir / LOADED_MODELS_FILE) as loaded,
        prompt_tokenizers(fleet[name] for name in deployments) as tokenizers,
    ):
        bar = tqdm(todo, desc="load points", unit="point", disable=not progress)
        for index, point in bar:
            bar.set_postfix_str(point.label)
            start = now_ns()
            for name in point.deployments:
                marks.write(_point_record(point, fleet[name], "started", start))
            outcomes = run_sync(_run_point(point, params, fleet, writer, params.sweep.seed + 1000 * index, tokenizers, ceiling))
            writer.sync()
            for name in point.deployments:
                for model in loaded_models_records(fleet[name], point.point_id(name), fleet):
                    loaded.write(model)
            dead = fleet.dead()
            for name, outcome in zip(point.deployments, outcomes, strict=True):
                record = _point_record(point, fleet[name], "done", start)
                record.end_ns = now_ns()
                record.requests = outcome.requests
                record.errors = outcome.errors
                record.schedule_lag_p99_ms = outcome.lag_p99_ms
                record.schedule_kept = outcome.schedule_kept
                if fleet[name] in dead:
                    record.status = "aborted"
                    record.message = f"{name} died during this point"
                elif outcome.requests and outcome.errors / outcome.requests > params.policy.max_error_rate:
                    record.status = "failed"
                    record.message = f"{outcome.errors} of {outcome.requests} requests failed"
                marks.write(record)
            if dead and params.policy.on_engine_death == "abort":
                server = dead[0]
                raise EngineError(
                    f"the engine of {server.name} ({server.framework}, pid {server.pid}) died during point "
                    f"{point.label}; every completed request is in {run_dir / REQUESTS_FILE}. Last lines of "
                    f"{server.log_path}:\n{server.log_tail()}"
                )


def completed_requests(run_dir: Path) -> list[RequestRecord]:
    return [record for record in read_requests(run_dir) if record.ok]
