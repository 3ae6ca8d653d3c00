"""A run's working context: its folder and manifest, its running servers, and its memory sampler.

Whoever opens a `Lab` first owns the servers and the sampler (the `servelab run` process, or a notebook run
on its own); every later notebook of the same run attaches to them and leaves them running.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servelab.checks.calibrate import record_calibration
from servelab.errors import OutputsError
from servelab.manifest import build_manifest, read_manifest, update_manifest, write_manifest
from servelab.observe import gpu_inventory
from servelab.params import Params, load_params, params_stem
from servelab.records import MANIFEST_FILE
from servelab.serve import deploy as deployment_module
from servelab.serve.deploy import Fleet, RunningServer
from servelab.serve.engines import engine_packages

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def new_run_id(params_path: str | Path) -> str:
    """`YYYYMMDD-HHMMSS-<params stem>` in UTC."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{params_stem(params_path)}"


def open_run(params_path: str | Path, run_dir: str | Path | None = None, outputs_dir: str | Path = "outputs") -> tuple[Params, Path]:
    """Validate the params, then create the run folder and its manifest, or reopen an existing run folder."""
    params = load_params(params_path)
    return params, create_run(params, params_path, run_dir, outputs_dir)


def create_run(
    params: Params, params_path: str | Path, run_dir: str | Path | None = None, outputs_dir: str | Path = "outputs"
) -> Path:
    """Create the run folder of already-validated `params` and its manifest, or reopen an existing run folder."""
    if run_dir:
        path = Path(run_dir)
    else:
        root = Path(outputs_dir)
        base = root / new_run_id(params_path)
        path, suffix = base, 2
        while path.exists():
            path, suffix = Path(f"{base}-{suffix}"), suffix + 1
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not (path / MANIFEST_FILE).exists():
            write_manifest(path, build_manifest(params, str(params_path), path.name, REPO, gpu_inventory(), engine_packages()))
            record_calibration(path)  # this host's last `servelab calibrate`, if there is one
    except OSError as error:
        raise OutputsError(f"cannot create the run folder {path}: {error.strerror}; check the disk and permissions") from None
    return path


def latest_run(outputs_dir: str | Path = "outputs", stem: str | None = None) -> Path | None:
    """The newest run folder that has a manifest (of params named `stem`, if given), or None."""
    pattern = "*/" if stem is None else f"*-*-{stem}*/"
    runs = sorted(p for p in Path(outputs_dir).glob(pattern) if (p / MANIFEST_FILE).exists())
    return runs[-1] if runs else None


@dataclass
class Lab:
    """What a notebook works with: the params, the run folder, the fleet and the memory sampler."""

    params: Params
    run_dir: Path
    fleet: Fleet
    sampler: Any = None
    owner: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def servers(self) -> list[RunningServer]:
        return list(self.fleet)

    @property
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.run_dir)


def _record_engines(run_dir: Path, fleet: Fleet) -> None:
    engines = {
        server.name: {
            "framework": server.framework,
            "model": server.model,
            "version": server.version,
            "argv": server.argv,
            "ready_s": round(server.ready_s, 3),
            "shape_only": server.shape_only,
            # A server that ran already: whose memory was measured (its process, found by port), or why not.
            **({} if server.started else {"started": False, "memory": server.listener}),
        }
        for server in fleet
    }
    update_manifest(run_dir, engines=engines)


@contextmanager
def lab(params: Params, run_dir: Path, sample_memory: bool = True) -> Iterator[Lab]:
    """Attach to the run's live servers, or start sampler and servers, owning them until the block ends."""
    attached = deployment_module.attach(run_dir)
    if attached is not None:
        yield Lab(params=params, run_dir=run_dir, fleet=attached, owner=False)
        return
    with ExitStack() as stack:
        sampler = None
        on_launched = None
        check = None
        if sample_memory:
            from servelab.observe import MemorySampler

            pid_map = memory_attribution(params)
            sampler = MemorySampler(
                run_dir,
                sample_hz=params.memory.sample_hz,
                attribution=pid_map,
            )
            stack.enter_context(sampler)

            on_launched = pid_map.add

            check = _free_memory_check(params)
        fleet = stack.enter_context(deployment_module.deploy(params, run_dir, check, on_launched))
        _record_engines(run_dir, fleet)
        yield Lab(params=params, run_dir=run_dir, fleet=fleet, sampler=sampler, owner=True)
    if sampler is not None:
        update_manifest(run_dir, memory_sampler=sampler.stats())


def memory_attribution(params: Params, docker: str = "docker", proc: Path = Path("/proc")) -> Any:
    """The run's PidMap: servers it starts are added as they launch; with memory.compose_project, each
    deployment's compose container is added now, so a compose run's memory is attributed per model."""
    from servelab.observe import PidMap

    pid_map = PidMap(docker, proc)
    if params.memory.compose_project is not None:
        pid_map.add_compose(params.memory.compose_project, [deployment.name for deployment in params.deployments])
    return pid_map


def _free_memory_check(params: Params) -> deployment_module.FreeMemoryCheck | None:
    """Before each start, refuse when the GPU's free memory cannot hold the next deployment's budget."""
    from servelab.observe import free_device_mib
    from servelab.serve.planner import required_mib

    def check(deployment: Any) -> None:
        for index in deployment.gpus or (params.memory.device_index,):
            free = free_device_mib(index)
            if free is None:
                continue
            total = free.total_mib
            needed = required_mib(deployment, total, free.free_mib)
            if needed > free.free_mib:
                from servelab.errors import DeployError

                raise DeployError(
                    f"{deployment.name} needs about {needed:,.0f} MiB of GPU {index}'s memory but only "
                    f"{free.free_mib:,.0f} MiB of {total:,.0f} MiB is free; lower its memory fraction or stop what "
                    f"holds the GPU (`servelab plan` shows a split that fits)"
                )

    return check
