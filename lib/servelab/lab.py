"""The lab: what the notebooks import, and one live set of servers per params file, shared by every kernel.

`open(params_path)` attaches to the params file's live lab, or starts one: the params are read and validated
once, a run folder is made, and a small lab process (`python -m servelab.lab`) deploys the servers and the
memory sampler and keeps them up, detached from any kernel. Its state file, `<outputs>/.labs/<key>.json`, names
the run folder, the lab process and the servers. So running 01, 02 and 03 one after another, re-running a cell,
or restarting the kernel all attach to the same servers. They stop on `close()` (or `servelab lab stop`), or
when the lab has been idle for `idle_timeout_s`: nothing attached, swept or written in that time.

Given a run folder (as under `servelab run`, whose process owns the batch's servers), a notebook only attaches
to that run's servers: it never starts any there, so nothing outlives the batch.

Every notebook reads the run's params from its run folder (`manifest.read_params`), never the YAML again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil

from servelab.analyse import frames as tables
from servelab.analyse import memory_tables as memory
from servelab.analyse import plots
from servelab.analyse.metrics import wide
from servelab.analyse.summary import slo_of, write_summary
from servelab.errors import ServelabError
from servelab.manifest import read_params
from servelab.measure.sweep import run_sweep
from servelab.params import Params, load_params, params_stem
from servelab.records import MANIFEST_FILE, POINTS_FILE, REQUESTS_FILE
from servelab.report.sections import RunReport
from servelab.run import describe_grid
from servelab.serve.deploy import STATE_FILE, Fleet, RunningServer, stop_on_signals, tail
from servelab.serve.engines import adapter_for
from servelab.session import Lab, create_run, latest_run
from servelab.session import lab as own_servers

__all__ = [
    "Lab", "LabError", "LabState", "RecordedRun", "RunReport", "close", "deployment_table", "describe_grid", "experiment", "memory",
    "plots", "recorded", "report_run", "status", "sweep", "tables", "wide",
]

log = logging.getLogger(__name__)

LABS_DIR = ".labs"
IDLE_TIMEOUT_S = 3600.0
"""A lab nobody attached to, swept with or wrote to for an hour stops its servers."""
LOG_FILE = "lab.log"
USED_FILE = "lab.used"
"""Touched in the run's logs/ whenever a kernel attaches or sweeps: the idle watchdog's clock."""
HEALTH_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 60.0


class LabError(ServelabError):
    """The lab process could not start its servers, or a lab could not be found or stopped."""


@dataclass
class LabState:
    """What `<outputs>/.labs/<key>.json` holds: who runs the lab, for which params, in which run folder."""

    params_path: str
    run_dir: str
    pid: int
    """The lab process, which owns the servers and the memory sampler."""
    idle_timeout_s: float
    started_utc: str
    ready: bool = False
    servers: list[dict[str, Any]] | None = None
    """name, pid, port and base_url of each server, once ready."""
    error: str | None = None


@dataclass(frozen=True)
class RecordedRun:
    """A run folder read as it is, with nothing started: its params come from its manifest."""

    params: Params
    run_dir: Path


# ------------------------------------------------------------------------------------------ where a lab lives
def state_path(params_path: str | Path, outputs_dir: str | Path) -> Path:
    """One lab per params file: `<outputs>/.labs/<stem>-<hash of its resolved path>.json`."""
    resolved = str(Path(params_path).resolve())
    key = hashlib.sha256(resolved.encode()).hexdigest()[:10]
    return Path(outputs_dir) / LABS_DIR / f"{Path(params_path).stem}-{key}.json"


def read_state(path: Path) -> LabState | None:
    try:
        return LabState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(path: Path, state: LabState) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    os.replace(temporary, path)


def _is_lab_process(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "servelab.lab" in " ".join(process.cmdline())
    except psutil.Error:
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One kernel at a time decides whether to start the lab of a params file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ attach or start
def experiment(
    params_path: str, run_dir: str = "", outputs_dir: str = "../outputs", idle_timeout_s: float = IDLE_TIMEOUT_S
) -> Lab:
    """The experiment a notebook works on: its params, run folder and running servers.

    With `run_dir` (as `servelab run` passes it), attach to the servers of that run, never starting any. Without,
    attach to the live lab of `params_path`, or start one: a new run folder and its servers, which stay up across
    kernels until `close()`, `servelab lab stop`, or `idle_timeout_s` without use.
    """
    if run_dir:
        attached = _attach(Path(run_dir))
        if attached is None:
            raise LabError(
                f"no live servers for the run {run_dir}: the lab or `servelab run` that owned them has stopped. Leave "
                f"run_dir empty to start a lab, continue a batch with `servelab run PARAMS --resume RUN_ID`, or "
                f"analyse the run with 03_gpu_memory and 04_report"
            )
        return attached
    path = state_path(params_path, outputs_dir)
    with _locked(path):
        state = read_state(path)
        if state is not None and not _is_lab_process(state.pid):
            path.unlink(missing_ok=True)  # its process is gone, and its servers died with it
            state = None
        if state is not None:
            attached = _wait_ready(path, state)
            if attached is not None and _healthy(attached):
                _note_changed_params(params_path, attached)
                return attached
            log.warning("the lab of %s has a server that does not answer; stopping it and starting again", params_path)
            _stop(path)
        folder = create_run(load_params(params_path), params_path, None, outputs_dir)
        state = _start(path, params_path, folder, idle_timeout_s)
        attached = _wait_ready(path, state)
        if attached is None:
            raise LabError(f"the lab process for {params_path} stopped before its servers were ready; see {folder / 'logs' / LOG_FILE}")
        return attached


def _attach(run_dir: Path) -> Lab | None:
    """The servers of `run_dir`, while the process that owns them (a lab, or `servelab run`) is alive."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
        owner, servers = int(state["owner_pid"]), {s["name"]: RunningServer(**s) for s in state["servers"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not servers or not psutil.pid_exists(owner):
        return None
    _touch(run_dir)
    return Lab(params=read_params(run_dir), run_dir=run_dir, fleet=Fleet(run_dir=run_dir, servers=servers, owned=False), owner=False)


def _touch(run_dir: Path) -> None:
    """Mark the lab of `run_dir` as in use, for its idle watchdog."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / USED_FILE).touch()


def _start(path: Path, params_path: str, run_dir: Path, idle_timeout_s: float) -> LabState:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / LOG_FILE).open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own module, arguments we made
            [sys.executable, "-m", "servelab.lab", str(path.resolve()), str(run_dir.resolve()), str(idle_timeout_s)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a kernel's restart or interrupt does not reach it
        )
    state = LabState(
        params_path=str(Path(params_path).resolve()),
        run_dir=str(run_dir.resolve()),
        pid=process.pid,
        idle_timeout_s=idle_timeout_s,
        started_utc=f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
    )
    _write_state(path, state)
    print(f"starting the lab of {Path(params_path).name}: run folder {run_dir}, lab process {process.pid}")
    return state


def _wait_ready(path: Path, state: LabState) -> Lab | None:
    """Wait while the lab process deploys; its Lab once ready, None if the process stopped."""
    run_dir = Path(state.run_dir)
    while True:
        current = read_state(path)
        if current is not None and current.error:
            path.unlink(missing_ok=True)
            raise LabError(current.error)
        if current is not None and current.ready:
            attached = _attach(run_dir)
            if attached is not None:
                return attached
        if not _is_lab_process(state.pid):
            path.unlink(missing_ok=True)
            tail_text = tail(run_dir / "logs" / LOG_FILE)
            raise LabError(f"the lab process stopped before its servers were ready. Last lines of its log:\n{tail_text}")
        time.sleep(0.2)


def _healthy(current: Lab) -> bool:
    """Every server alive and answering its engine's health check; one merely slow to answer (busy) counts."""
    deployments = {d.name: d for d in current.params.deployments}
    for server in current.servers:
        if not server.alive() or server.name not in deployments:
            return False
        adapter = adapter_for(deployments[server.name])
        try:
            if not adapter.is_healthy(httpx.get(server.base_url + adapter.health_path, timeout=HEALTH_TIMEOUT_S)):
                return False
        except httpx.TimeoutException:
            log.info("%s is slow to answer %s; attaching to it anyway", server.name, adapter.health_path)
        except httpx.HTTPError:
            return False
    return True


def _note_changed_params(params_path: str, current: Lab) -> None:
    try:
        now = load_params(params_path)
    except ServelabError:
        now = None
    if now != current.params:
        print(
            f"note: {params_path} has changed since this lab started; the lab keeps the params it started with "
            f"({current.run_dir / MANIFEST_FILE}). To use the new ones: lab.close(params_path), then run again."
        )


# ------------------------------------------------------------------------------------------ stop
def close(params_path: str, outputs_dir: str = "../outputs") -> bool:
    """Stop the lab of `params_path`: its servers and its memory sampler. False when none was running."""
    path = state_path(params_path, outputs_dir)
    with _locked(path):
        return _stop(path)


def _stop(path: Path) -> bool:
    state = read_state(path)
    if state is None:
        return False
    stopped = False
    if _is_lab_process(state.pid):
        os.kill(state.pid, signal.SIGTERM)
        try:
            psutil.Process(state.pid).wait(timeout=STOP_TIMEOUT_S)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise LabError(f"the lab process {state.pid} did not stop within {STOP_TIMEOUT_S:g} s; kill it with `kill {state.pid}`") from None
        stopped = True
    path.unlink(missing_ok=True)
    return stopped


def status(params_path: str, outputs_dir: str = "../outputs") -> pd.DataFrame:
    """The lab of `params_path`: its run folder, process, servers and idle limit, or a note that none runs."""
    state = read_state(state_path(params_path, outputs_dir))
    if state is None or not _is_lab_process(state.pid):
        return pd.DataFrame({"lab": [f"no lab running for {Path(params_path).name}; 01_deploy starts one"]})
    rows = [
        {"run_dir": state.run_dir, "lab_pid": state.pid, "started_utc": state.started_utc, "idle_timeout_s": state.idle_timeout_s,
         "server": server["name"], "server_pid": server["pid"], "endpoint": server["base_url"]}
        for server in state.servers or []
    ]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the lab process
def _last_use_s(state_file: Path, run_dir: Path) -> float:
    """Seconds since the lab was last attached to or its run last wrote a request or a point."""
    times = [
        path.stat().st_mtime
        for path in (state_file, run_dir / "logs" / USED_FILE, run_dir / REQUESTS_FILE, run_dir / POINTS_FILE)
        if path.exists()
    ]
    return time.time() - max(times, default=time.time())


def serve(state_file: Path, run_dir: Path, idle_timeout_s: float) -> int:
    """The lab process: deploy the run's servers and its memory sampler, keep them up until SIGTERM or idle."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = read_params(run_dir)
    state = LabState(str(run_dir), str(run_dir), os.getpid(), idle_timeout_s, "")
    try:
        with stop_on_signals(), own_servers(params, run_dir) as live:
            state = read_state(state_file) or state  # as the opener wrote it, while the servers started
            state.ready = True
            state.servers = [{"name": s.name, "pid": s.pid, "port": s.port, "base_url": s.base_url} for s in live.servers]
            _write_state(state_file, state)
            log.info("lab ready: %s", ", ".join(f"{s.name} at {s.base_url}" for s in live.servers))
            reported: set[str] = set()
            while _last_use_s(state_file, run_dir) < idle_timeout_s:
                time.sleep(min(5.0, idle_timeout_s / 10))
                for server in live.fleet.dead():
                    if server.name not in reported:
                        log.warning("%s (pid %d) has died; last lines of its log:\n%s", server.name, server.pid, server.log_tail())
                        reported.add(server.name)
            log.info("idle for %.0f s: stopping the lab", idle_timeout_s)
    except ServelabError as error:
        state.error = f"the lab could not start its servers: {error}"
        _write_state(state_file, state)
        return 2
    finally:
        if not state.error:
            _forget(state_file)
    return 0


def _forget(state_file: Path) -> None:
    current = read_state(state_file)
    if current is not None and current.pid == os.getpid():
        state_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ for the notebooks
def sweep(current: Lab) -> pd.DataFrame:
    """Run every load point of the run not yet finished, and return the tidy summary (also summary.csv)."""
    _touch(current.run_dir)
    run_sweep(current.params, current.run_dir, current.fleet)
    _touch(current.run_dir)
    return write_summary(current.run_dir, slo=slo_of(current.params))


def recorded(params_path: str, run_dir: str = "", outputs_dir: str = "../outputs", analyse_only: bool = False) -> RecordedRun:
    """A run to analyse, starting nothing: `run_dir`; else (unless `analyse_only`) the run of the live lab of
    `params_path`, or the newest run of that params file."""
    if run_dir:
        path = Path(run_dir)
    elif analyse_only:
        raise LabError("analyse_only needs run_dir: the folder of the run to analyse")
    else:
        state = read_state(state_path(params_path, outputs_dir))
        if state is not None and _is_lab_process(state.pid):
            path = Path(state.run_dir)
        else:
            newest = latest_run(outputs_dir, params_stem(params_path))
            if newest is None:
                raise LabError(f"no run of {params_path} under {outputs_dir} yet: run 01_deploy or 02_sweep first")
            path = newest
    if not (path / MANIFEST_FILE).is_file():
        raise LabError(f"{path} is not a run folder (no {MANIFEST_FILE}); give outputs/<run-id>")
    return RecordedRun(params=read_params(path), run_dir=path)


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
    samples = tables.memory_frame(current.run_dir)
    idle = idle_memory_mib(samples)
    deployments = {d.name: d for d in current.params.deployments}
    rows = []
    for server in current.servers:
        adapter = adapter_for(deployments[server.name])
        try:
            healthy = adapter.is_healthy(httpx.get(server.base_url + adapter.health_path, timeout=HEALTH_TIMEOUT_S))
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
                "memory_source": samples["source"].iloc[0] if not samples.empty else "none",
                "endpoint": server.base_url,
            }
        )
    return pd.DataFrame(rows)


def idle_memory_mib(samples: pd.DataFrame) -> dict[str, float]:
    """Per deployment, its processes' memory summed at the latest sample."""
    rows = samples[(samples["scope"] == "process") & samples["deployment"].notna()]
    if rows.empty:
        return {}
    latest = rows[rows["t_ns"] == rows.groupby("deployment")["t_ns"].transform("max")]
    return latest.groupby("deployment")["used_mib"].sum().round(1).to_dict()


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])))
