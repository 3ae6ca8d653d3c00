"""Small sync entry points for the notebooks, so that each notebook is parameters, calls, plots and prose."""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from servelab.analyse import frames as tables
from servelab.manifest import read_manifest
from servelab.params import Params, parse_params
from servelab.records import MANIFEST_FILE
from servelab.serve.engines import adapter_for
from servelab.session import Lab, lab, latest_run, open_run

_stack = ExitStack()
atexit.register(_stack.close)


def start(params_path: str, run_dir: str = "", outputs_dir: str = "../outputs", sample_memory: bool = True) -> Lab:
    """Open the run (a new one when `run_dir` is empty) and attach to its servers, or start them for this kernel.

    Servers started here stop when the kernel stops; `servelab run` starts them once for all four notebooks.
    """
    params, path = open_run(params_path, run_dir or None, outputs_dir)
    return _stack.enter_context(lab(params, path, sample_memory=sample_memory))


@dataclass(frozen=True)
class RecordedRun:
    """A finished run folder read as it is, with nothing started: its params come from its manifest."""

    params: Params
    run_dir: Path


def recorded(run_dir: str) -> RecordedRun:
    """Open `run_dir` for analysis only, e.g. a run brought back from the GPU machine whose servers are gone."""
    if not run_dir:
        raise ValueError("analyse_only needs run_dir: the folder of the run to analyse")
    path = Path(run_dir)
    return RecordedRun(params=parse_params(read_manifest(path)["params"], str(path / MANIFEST_FILE)), run_dir=path)


def stop() -> None:
    """Stop the servers and the sampler this kernel started (no-op for attached ones)."""
    _stack.close()


def report_run(run_dir: str = "", outputs_dir: str = "../outputs") -> Path:
    """The run the report is about: `run_dir`, or the newest run under `outputs_dir`."""
    if run_dir:
        return Path(run_dir)
    newest = latest_run(outputs_dir)
    if newest is None:
        raise FileNotFoundError(f"no run under {outputs_dir}: run 02_sweep first, or `make demo`")
    return newest


def deployment_table(current: Lab) -> pd.DataFrame:
    """Per deployment: framework, model, version, health, time to ready and idle memory from the sampler."""
    import httpx

    memory = tables.memory_frame(current.run_dir)
    idle = idle_memory_mib(memory)
    deployments = {deployment.name: deployment for deployment in current.params.deployments}
    rows = []
    for server in current.servers:
        try:
            health_path = adapter_for(deployments[server.name]).health_path_for(deployments[server.name])
            healthy = httpx.get(server.base_url + health_path, timeout=5).status_code == 200
        except httpx.HTTPError:
            healthy = False
        rows.append(
            {
                "deployment": server.name,
                "framework": server.framework,
                "model": server.model + (" (shape only)" if server.shape_only else ""),
                "version": server.version,
                "healthy": healthy,
                "ready_s": round(server.ready_s, 2),
                "idle_memory_mib": idle.get(server.name),
                "memory_source": memory["source"].iloc[0] if not memory.empty else "none",
                "endpoint": server.base_url,
            }
        )
    return pd.DataFrame(rows)


def idle_memory_mib(memory: pd.DataFrame) -> dict[str, float]:
    """Per deployment, its processes' memory summed at the latest sample."""
    rows = memory[(memory["scope"] == "process") & memory["deployment"].notna()]
    if rows.empty:
        return {}
    latest = rows[rows["t_ns"] == rows.groupby("deployment")["t_ns"].transform("max")]
    return latest.groupby("deployment")["used_mib"].sum().round(1).to_dict()
