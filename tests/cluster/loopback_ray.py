"""A real local Ray cluster for the --cluster tests: a head and a worker node on loopback, in a network namespace
of the test's own, with a custom resource `fake_gpu` standing in for each node's GPU.

Ray registers a node under the host's outward address even when told `--node-ip-address 127.0.0.1`; inside a
namespace whose only interface is `lo` it has no other address, so every byte stays on loopback. Making the
namespace needs root (CI runs as root). Each node gets its own TMPDIR, so a test can tell which node's scratch
folder holds which group.

`loopback_ray_node_with_declared_gpus` is one node that declares two GPUs (`ray start --num-gpus 2`) on this
host, which has none: Ray hands out GPU ids 0 and 1 and sets CUDA_VISIBLE_DEVICES for each actor as it would on a
two-GPU host. They are stand-ins: only an engine that ignores CUDA_VISIBLE_DEVICES (the embedded llama.cpp) runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PORT = 6379
STAND_IN = "fake_gpu"
NODE_FLAGS = ("--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--resources", f'{{"{STAND_IN}": 1}}',
              "--object-store-memory", "100000000")
DECLARED_GPUS = 2
GPU_NODE_FLAGS = ("--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", str(DECLARED_GPUS),
                  "--object-store-memory", "100000000")
START_TIMEOUT_S = 300.0


@dataclass
class LoopbackCluster:
    namespace: str
    address: str
    env: dict[str, str]
    head_tmp: Path
    worker_tmp: Path
    worker: subprocess.Popen[bytes] | None
    """None for a cluster of the head alone."""

    def command(self, *args: str) -> list[str]:
        """`args` as run inside the cluster's namespace, with the cluster's environment."""
        return ["ip", "netns", "exec", self.namespace, "env", *(f"{k}={v}" for k, v in self.env.items()), *args]

    def servelab(self, *args: str, cwd: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(sys.executable, "-m", "servelab.cli", *args), cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def pids(self) -> list[int]:
        """Every process in the cluster's namespace: its nodes', its actors' and the servers they start."""
        return _pids_in(self.namespace)

    def kill_worker_node(self) -> None:
        """SIGKILL every process of the worker node (its raylet and agents share the process group of its `ray start`)."""
        assert self.worker is not None, "this cluster has no worker node"
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=30)


def _run(command: list[str], timeout_s: float = START_TIMEOUT_S) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert completed.returncode == 0, f"{' '.join(command)} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


def _wait_for_line(path: Path, line: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text(errors="replace"):
            return
        assert process.poll() is None, f"the worker node exited while starting:\n{path.read_text(errors='replace')[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"the worker node did not start within {START_TIMEOUT_S:.0f} s:\n{path.read_text(errors='replace')[-3000:]}")


@contextmanager
def _first_in_line() -> Iterator[None]:
    """Raise this session's CPU share while the nodes start. A raylet waits a fixed 15 s for its dashboard agent
    to report its port and aborts after that; on two cores shared by several busy sessions, the agent's
    `import ray` alone took 17 s. The kernel shares CPU between sessions (autogroups), so plain `nice` does not
    help; the session's own autogroup nice does. Set back as soon as both nodes are up."""
    autogroup = Path("/proc/self/autogroup")
    try:
        before = autogroup.read_text().split()[-1]
        autogroup.write_text("-10")
    except (OSError, IndexError):
        yield
        return
    try:
        yield
    finally:
        autogroup.write_text(before)


def _pids_in(namespace: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return [int(pid) for pid in listed.stdout.split()]


def _stop_everything_in(namespace: str) -> None:
    """End the cluster: every process in the test's own namespace, by id (not `ray stop`, which ends every Ray
    process of the host by name, other people's included), SIGTERM first, then SIGKILL what is left."""

    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        for pid in _pids_in(namespace):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while _pids_in(namespace) and time.monotonic() < deadline:
            time.sleep(0.2)


@contextmanager
def _loopback(head_flags: tuple[str, ...], with_worker: bool) -> Iterator[LoopbackCluster]:
    """A head with `head_flags` (and a worker node with NODE_FLAGS) in a network namespace of its own; all of it
    ended and removed afterwards."""
    namespace = f"servelab-{uuid.uuid4().hex[:8]}"
    # Short: Ray's unix sockets live under its temp dir and their paths must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="slray", dir="/tmp"))
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(REPO / "lib"),
        "HOME": os.environ.get("HOME", "/root"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Two shared cores start a node's agents slowly; Ray's default wait (15 s) kills the raylet first.
        "RAY_agent_register_timeout_ms": "240000",
        "RAY_raylet_start_wait_time_s": "240",
        "RAY_worker_register_timeout_seconds": "600",
    }
    head_tmp, worker_tmp = root / "head", root / "worker"
    head_tmp.mkdir()
    worker_tmp.mkdir()
    worker = None
    starting = ExitStack()
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], check=True)
        cluster = LoopbackCluster(namespace, f"127.0.0.1:{PORT}", env, head_tmp, worker_tmp, None)
        starting.enter_context(_first_in_line())
        in_head = {**env, "TMPDIR": str(head_tmp)}
        _run([
            "ip", "netns", "exec", namespace, "env", *(f"{k}={v}" for k, v in in_head.items()),
            "ray", "start", "--head", "--port", str(PORT), *head_flags, "--include-dashboard=false",
            "--disable-usage-stats", "--temp-dir", str(root / "ray"), "--min-worker-port", "10002", "--max-worker-port", "10999",
        ])
        if with_worker:
            in_worker = {**env, "TMPDIR": str(worker_tmp)}
            worker_log = root / "worker.log"
            with open(worker_log, "wb") as log:
                worker = subprocess.Popen(
                    [
                        "ip", "netns", "exec", namespace, "env", *(f"{k}={v}" for k, v in in_worker.items()),
                        "ray", "start", "--address", cluster.address, *NODE_FLAGS, "--block",
                        "--min-worker-port", "11000", "--max-worker-port", "11999",
                        # The head's agents hold the default ports on this same loopback.
                        "--dashboard-agent-listen-port", "52400", "--dashboard-agent-grpc-port", "52401",
                        "--metrics-export-port", "52402", "--runtime-env-agent-port", "52403",
                    ],
                    stdout=log, stderr=subprocess.STDOUT, process_group=0,
                )
            _wait_for_line(worker_log, "Ray runtime started", worker)
        starting.close()
        cluster.worker = worker
        yield cluster
    finally:
        starting.close()
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        _stop_everything_in(namespace)
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def loopback_ray_cluster() -> Iterator[LoopbackCluster]:
    """A head and a worker node, each with one `fake_gpu`."""
    with _loopback(NODE_FLAGS, with_worker=True) as cluster:
        yield cluster


@pytest.fixture
def loopback_ray_node_with_declared_gpus() -> Iterator[LoopbackCluster]:
    """One node that declares DECLARED_GPUS GPUs it does not have; Ray hands out their ids all the same."""
    with _loopback(GPU_NODE_FLAGS, with_worker=False) as cluster:
        yield cluster
