"""Which deployment owns a process: by process tree (native launch), by container (Docker), and Ollama's own
report of the memory it holds (`/api/ps`) as a cross-check.

A native server is its root pid and every descendant: vLLM v1 starts an engine-core child that holds the GPU
memory, Ollama starts one runner per loaded model. Trees change, so `PidMap.resolve()` walks them afresh each
time it is called. A root is remembered with its start time, so a recycled pid is not mistaken for it.

A server in a container (a compose run) is every host process in the container's cgroup: NVML lists host pids,
and each one's `/proc/<pid>/cgroup` names its container's 64-hex id (`/docker/<id>` under cgroup v1,
`/system.slice/docker-<id>.scope` under v2; containerd and podman name theirs alike). A container named by its
name is looked up once per resolve with `docker inspect`; one named by its full id needs no Docker CLI at all.
`docker top` is the fallback where /proc shows no cgroups.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

MIB = 1024 * 1024
PROC = Path("/proc")
CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_CONTAINER_IN_CGROUP = re.compile(r"(?:^|/|docker-|cri-containerd-|crio-|libpod-)([0-9a-f]{64})(?:\.scope)?(?:/|$)")


@dataclass(frozen=True)
class _Root:
    pid: int
    create_time: float | None


def process_table() -> dict[int, list[int]]:
    """Children of every pid on the host, from one pass over the process list."""
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["pid", "ppid"]):
        info = process.info
        if info.get("ppid") is not None:
            children.setdefault(int(info["ppid"]), []).append(int(info["pid"]))
    return children


def descendants(root_pid: int, children: Mapping[int, list[int]]) -> list[int]:
    """`root_pid` and every process below it in `children`, root first."""
    found, stack, seen = [], [root_pid], {root_pid}
    while stack:
        pid = stack.pop()
        found.append(pid)
        for child in children.get(pid, ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return found


def pids_from_docker_top(output: str) -> list[int]:
    """The pids in `docker top CONTAINER -eo pid` output (a 'PID' header, then one pid per line)."""
    pids = []
    for line in output.splitlines():
        field = line.strip().split(maxsplit=1)[0] if line.strip() else ""
        if field.isdigit():
            pids.append(int(field))
    return pids


def container_in_cgroup(text: str) -> str | None:
    """The 64-hex id of the container a process runs in, from its `/proc/<pid>/cgroup`; None outside containers."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        found = _CONTAINER_IN_CGROUP.search(path)
        if found:
            return found.group(1)
    return None


def pids_by_container(proc: Path = PROC) -> dict[str, list[int]]:
    """{container id: its host pids, ascending} over every process under `proc` that runs in a container."""
    found: dict[str, list[int]] = {}
    try:
        entries = [entry for entry in proc.iterdir() if entry.name.isdigit()]
    except OSError:
        return found
    for entry in sorted(entries, key=lambda e: int(e.name)):
        try:
            container = container_in_cgroup((entry / "cgroup").read_text(encoding="utf-8", errors="replace"))
        except OSError:  # gone since the listing, or not ours to read
            continue
        if container is not None:
            found.setdefault(container, []).append(int(entry.name))
    return found


def compose_container(project: str, service: str, replica: int = 1) -> str:
    """The name docker compose (v2) gives a service's container: `<project>-<service>-<replica>`."""
    return f"{project}-{service}-{replica}"


def _inspect(container: str, docker: str, timeout_s: float) -> tuple[str | None, int | None]:
    """(full id, init pid) of a running container from `docker inspect`; (None, None) when it is not running."""
    try:
        inspected = subprocess.run(
            [docker, "inspect", "--format", "{{.Id}} {{.State.Pid}}", container],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("cannot inspect container %s: %s", container, error)
        return None, None
    parts = inspected.stdout.split()
    if inspected.returncode != 0 or len(parts) != 2 or not CONTAINER_ID.fullmatch(parts[0]):
        return None, None
    return parts[0], int(parts[1]) if parts[1].isdigit() and int(parts[1]) > 0 else None


def container_pids(
    container: str, docker: str = "docker", timeout_s: float = 10.0, proc: Path = PROC,
    scanned: Mapping[str, list[int]] | None = None,
) -> list[int]:
    """Host pids of a running container (by name or full id): every process in its cgroup, else its init
    (`State.Pid`) and every pid `docker top` lists; [] if it is not running. `scanned`: a `pids_by_container`
    result to use instead of reading `proc` again.

    The pids are those of the host's pid namespace, which is what NVML reports when servelab runs on the host.
    """
    full_id, root = (container, None) if CONTAINER_ID.fullmatch(container) else _inspect(container, docker, timeout_s)
    if full_id is not None:
        in_cgroup = (scanned if scanned is not None else pids_by_container(proc)).get(full_id)
        if in_cgroup:
            return in_cgroup
    if root is None:
        return []
    pids = [root]
    try:
        top = subprocess.run(
            [docker, "top", container, "-eo", "pid"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if top.returncode == 0:
            pids.extend(p for p in pids_from_docker_top(top.stdout) if p not in pids)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("cannot list the processes of container %s: %s", container, error)
    return pids


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class PidMap:
    """Deployment names with the roots of their process trees; `resolve()` gives every current pid's owner."""

    def __init__(self, docker: str = "docker", proc: Path = PROC) -> None:
        self._roots: dict[str, list[_Root]] = {}
        self._containers: dict[str, list[str]] = {}
        self._docker = docker
        self._proc = proc
        self._lock = threading.Lock()  # add() runs in the caller's thread, resolve() in the sampler's
        self.generation = 0
        """Counts changes made by add/add_container/remove, so a sampler knows to resolve again at once."""

    def add(self, deployment: str, root_pid: int) -> None:
        """Attribute `root_pid` and all its present and future descendants to `deployment`."""
        root = _Root(root_pid, _create_time(root_pid))
        with self._lock:
            self._roots.setdefault(deployment, []).append(root)
            self.generation += 1

    def add_container(self, deployment: str, container: str) -> None:
        """Attribute a container's processes (by name or full id; found again at every resolve) to `deployment`."""
        with self._lock:
            self._containers.setdefault(deployment, []).append(container)
            self.generation += 1

    def add_compose(self, project: str, deployments: Iterable[str]) -> None:
        """Attribute each deployment's compose container (`servelab compose` names each service after its
        deployment) to it: a compose run's memory per model."""
        for deployment in deployments:
            self.add_container(deployment, compose_container(project, deployment))

    def remove(self, deployment: str) -> None:
        with self._lock:
            self._roots.pop(deployment, None)
            self._containers.pop(deployment, None)
            self.generation += 1

    @property
    def deployments(self) -> list[str]:
        with self._lock:
            return sorted(set(self._roots) | set(self._containers))

    def _alive_roots(self, deployment: str, scanned: Mapping[str, list[int]] | None = None) -> Iterable[int]:
        with self._lock:
            roots = list(self._roots.get(deployment, ()))
            containers = list(self._containers.get(deployment, ()))
        for root in roots:
            now = _create_time(root.pid)
            if now is not None and (root.create_time is None or abs(now - root.create_time) < 0.01):
                yield root.pid
        for container in containers:
            yield from container_pids(container, self._docker, proc=self._proc, scanned=scanned)

    def resolve(self) -> dict[int, str]:
        """{pid: deployment} for every live process of every deployment; the first deployment to claim a pid keeps it."""
        children = process_table()
        with self._lock:
            containers = any(self._containers.values())
        scanned = pids_by_container(self._proc) if containers else None  # one pass over /proc for every container
        owners: dict[int, str] = {}
        for deployment in self.deployments:
            for root in self._alive_roots(deployment, scanned):
                for pid in descendants(root, children):
                    claimed = owners.setdefault(pid, deployment)
                    if claimed != deployment:
                        log.warning("pid %d is in the trees of %s and %s; kept %s", pid, claimed, deployment, claimed)
        return owners

    def __call__(self) -> dict[int, str]:
        return self.resolve()


# ----------------------------------------------------------------------------------------------- Ollama
def ollama_vram_mib(ps: Mapping[str, Any]) -> dict[str, float]:
    """{model name: size_vram in MiB} from the parsed JSON of Ollama's `GET /api/ps`."""
    vram: dict[str, float] = {}
    for model in ps.get("models") or ():
        name = str(model.get("name") or model.get("model") or "?")
        vram[name] = vram.get(name, 0.0) + float(model.get("size_vram") or 0) / MIB
    return vram


@dataclass(frozen=True)
class OllamaVramCheck:
    """Ollama's own figure for the models it holds on the GPU against what NVML measured for its processes."""

    reported_mib: float
    measured_mib: float
    difference_mib: float
    """measured - reported: the CUDA context and compute buffers that /api/ps leaves out are expected here."""
    models: tuple[str, ...]

    @property
    def ratio(self) -> float | None:
        return self.measured_mib / self.reported_mib if self.reported_mib > 0 else None


def ollama_cross_check(ps: Mapping[str, Any], measured_mib: float) -> OllamaVramCheck:
    """Compare the sum of `size_vram` in an `/api/ps` answer with the measured memory of that Ollama's process tree."""
    vram = ollama_vram_mib(ps)
    reported = sum(vram.values())
    return OllamaVramCheck(reported, float(measured_mib), float(measured_mib) - reported, tuple(sorted(vram)))
