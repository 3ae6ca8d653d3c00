"""Start, watch and stop the servers a params file names, natively, without Docker.

Each server runs in its own process group with its output in `<run>/logs/<name>.log`, is started smallest
first, and must answer its health check within `startup_timeout_s`. Servers die with their owner: they are
stopped on normal exit, on an exception, on SIGINT/SIGTERM, and (through PR_SET_PDEATHSIG) when the owner is
killed outright. A `Fleet` is written to `<run>/deployments.json` so that other processes (each notebook's
kernel) can attach to the same running servers instead of starting their own.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from servelab.clock import now_ns
from servelab.errors import DeployError, EngineError
from servelab.params import Deployment, Params
from servelab.secrets import redact_file
from servelab.serve.engines import EngineAdapter, adapter_for
from servelab.serve.engines.base import start_order

log = logging.getLogger(__name__)

STATE_FILE = "deployments.json"
LOG_TAIL_LINES = 15


@dataclass
class RunningServer:
    """A server that answered its health check."""

    name: str
    framework: str
    model: str
    served_model: str
    api_flavour: str
    base_url: str
    port: int
    pid: int
    log_path: str
    argv: list[str]
    launched_ns: int
    ready_ns: int
    version: str = "unknown"
    metrics_path: str | None = None
    shape_only: bool = False
    model_path: str = ""
    """What the server loaded: a GGUF, a hub id, or a shape model's folder (its tokenizer too)."""
    tokenize_flavour: str | None = None
    """The body its /tokenize takes ('llamacpp' or 'vllm'), from its adapter; None: it has none."""
    started: bool = True
    """False for a server that ran already (kind endpoint): it is never stopped, and `pid` is 0 unless found."""
    api_key_env: str | None = None
    """The environment variable holding its API key (the name only: the value is read when sent, never stored)."""
    listener: str = ""
    """For a server that ran already: its process as found through its port, or why its memory is not measured."""
    loaded_models_path: str | None = None
    """Where it lists the models it holds and their memory (Ollama's /api/ps)."""

    @property
    def ready_s(self) -> float:
        return (self.ready_ns - self.launched_ns) / 1e9

    def alive(self) -> bool:
        if not self.started and self.pid == 0:
            return True  # a remote server: its health shows in its requests' errors
        try:
            process = psutil.Process(self.pid)
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(Path(self.log_path), lines)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16_384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL the server if the process that started it dies.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def gpu_environment(deployment: Deployment) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a deployment that names its `gpus`; nothing for one that uses them all."""
    if deployment.gpus is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(index) for index in deployment.gpus)}


FreeMemoryCheck = Callable[[Deployment], None]
"""Called before each start; raises DeployError when the device cannot hold the next deployment."""


def _wait_healthy(
    adapter: EngineAdapter, deployment: Deployment, process: subprocess.Popen[bytes], base_url: str, log_path: Path
) -> None:
    deadline = time.monotonic() + deployment.startup_timeout_s
    url = base_url + adapter.health_path_for(deployment)
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                raise EngineError(
                    f"{deployment.name} ({deployment.engine.kind}) exited with code {process.returncode} before it "
                    f"became healthy. Last lines of {log_path}:\n{tail(log_path)}"
                )
            try:
                if adapter.is_healthy(client.get(url)):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(
                    f"{deployment.name} ({deployment.engine.kind}) did not answer {adapter.health_path} within "
                    f"startup_timeout_s={deployment.startup_timeout_s:g}; raise it in the params if the engine is just "
                    f"slow. Last lines of {log_path}:\n{tail(log_path)}"
                )
            time.sleep(0.2)


def stop_child(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM a child process we started, then SIGKILL it if it is still there after `grace_s`; reaps it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_process_group(pid: int, grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left after `grace_s`."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    members = _group_members(group)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        _, alive = psutil.wait_procs(members, timeout=grace_s if sig == signal.SIGTERM else 5.0)
        if not alive:
            return


def _group_members(group: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == group:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


@dataclass
class Fleet:
    """The running servers of one run. `owned` fleets stop their servers on close; attached ones don't."""

    run_dir: Path
    servers: dict[str, RunningServer] = field(default_factory=dict)
    owned: bool = True
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> RunningServer:
        return self.servers[name]

    def __iter__(self) -> Iterator[RunningServer]:
        return iter(self.servers.values())

    def __len__(self) -> int:
        return len(self.servers)

    def save(self) -> None:
        state = {"owner_pid": os.getpid(), "servers": [asdict(s) for s in self.servers.values()]}
        path = self.run_dir / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2))
        os.replace(path.with_suffix(".tmp"), path)

    def close(self) -> None:
        if not self.owned:
            return
        for server in reversed(list(self.servers.values())):
            if server.started:
                stop_process_group(server.pid)
        for process in self._processes.values():
            if process.poll() is None:
                stop_process_group(process.pid)
            process.wait(timeout=10)
        for server in self.servers.values():
            if server.log_path:
                redact_file(Path(server.log_path))
        self.servers.clear()
        self._processes.clear()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dead(self) -> list[RunningServer]:
        return [server for server in self.servers.values() if not server.alive()]


def _model_for(adapter: EngineAdapter, deployment: Deployment, run_dir: Path) -> str:
    if deployment.shape:
        return adapter.shape_model(deployment, run_dir.parent / ".shapes")
    return adapter.model_path(deployment)


def api_key_headers(variable: str | None) -> dict[str, str]:
    """The bearer token header of an endpoint's API key, read here from the environment variable it names; the
    value is never written anywhere (deployments.json keeps the variable's name only)."""
    if variable is None:
        return {}
    value = os.environ.get(variable)
    if not value:
        raise DeployError(f"{variable} is not set: export the endpoint's API key as {variable} (secret_env names it)")
    return {"Authorization": f"Bearer {value}"}


REMOTE_NOT_MEASURED = "not measured: remote endpoint"
"""What the report says of the memory of a server that runs elsewhere (never zero)."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::")


def _local_addresses() -> set[str]:
    addresses = set(LOCAL_HOSTS) | {socket.gethostname(), socket.getfqdn()}
    for entries in psutil.net_if_addrs().values():
        addresses.update(entry.address.split("%")[0] for entry in entries)
    return addresses


def listening_pid(base_url: str) -> int | None:
    """The pid of the process listening on the URL's port, when the URL's host is this host; None otherwise (a
    remote host, or a process this user may not see)."""
    parts = httpx.URL(base_url)
    if parts.host not in _local_addresses():
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port and connection.pid:
            return int(connection.pid)
    return None


def _describe_process(pid: int, port: int) -> str:
    try:
        name = psutil.Process(pid).name()
    except psutil.Error:
        name = "process"
    return f"{name} (pid {pid}) on port {port}"


def _wait_answering(adapter: EngineAdapter, deployment: Deployment, base_url: str, headers: dict[str, str]) -> None:
    url = base_url + adapter.health_path_for(deployment)
    deadline = time.monotonic() + deployment.startup_timeout_s
    last = "no answer"
    with httpx.Client(timeout=5.0, headers=headers) as client:
        while True:
            try:
                response = client.get(url)
                if adapter.is_healthy(response):
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() > deadline:
                raise EngineError(
                    f"{deployment.name}: the endpoint did not answer {url} within startup_timeout_s="
                    f"{deployment.startup_timeout_s:g} ({last}); check base_url, api and the API key"
                )
            time.sleep(0.5)


def attach_endpoint(
    adapter: EngineAdapter, deployment: Deployment, fleet: Fleet, on_launched: Callable[[str, int], None] | None = None
) -> RunningServer:
    """Add a server that runs already to `fleet`: check it answers, find its process when it is on this host (and
    hand it to the memory sampler through `on_launched`), and start or stop nothing."""
    base_url = adapter.endpoint_url(deployment)
    if base_url is None:
        raise EngineError(f"{deployment.name}: {adapter.kind} has no endpoint URL")
    key_env = adapter.api_key_env(deployment)
    headers = api_key_headers(key_env)
    found = now_ns()
    _wait_answering(adapter, deployment, base_url, headers)
    port = httpx.URL(base_url).port or (443 if base_url.startswith("https") else 80)
    pid = listening_pid(base_url)
    if pid is not None and on_launched is not None:
        on_launched(deployment.name, pid)
    server = RunningServer(
        name=deployment.name,
        framework=deployment.engine.kind,
        model=deployment.model,
        served_model=adapter.served_model_name(deployment),
        api_flavour=adapter.api_flavour_for(deployment),
        base_url=base_url,
        port=port,
        pid=pid or 0,
        log_path="",
        argv=[],
        launched_ns=found,
        ready_ns=now_ns(),
        metrics_path=adapter.metrics_path_for(deployment),
        tokenize_flavour=adapter.tokenize_flavour_for(deployment),
        started=False,
        api_key_env=key_env,
        listener=_describe_process(pid, port) if pid is not None else REMOTE_NOT_MEASURED,
        loaded_models_path=adapter.loaded_models_path_for(deployment),
    )
    server.version = _probe_version(adapter, base_url, headers)
    fleet.servers[deployment.name] = server
    fleet.save()
    log.info("%s: using the endpoint at %s (%s)", deployment.name, base_url, server.listener)
    return server


def start_server(
    deployment: Deployment, run_dir: Path, fleet: Fleet, on_launched: Callable[[str, int], None] | None = None
) -> RunningServer:
    """Launch one server, wait for health, and add it to `fleet` (so it is stopped even if it never got healthy).

    `on_launched(name, pid)` is called the moment the process exists, before health: an engine takes its GPU
    memory while it starts, and the memory sampler must know whose it is from then on. A server that runs
    already (an endpoint) is attached instead (`attach_endpoint`)."""
    adapter = adapter_for(deployment)
    if not adapter.starts_server:
        return attach_endpoint(adapter, deployment, fleet, on_launched)
    if deployment.port is not None and not port_is_free(deployment.port):
        raise DeployError(
            f"{deployment.name}: port {deployment.port} on 127.0.0.1 is already in use; stop what holds it, "
            f"pick another port, or remove 'port' from the params to get a free one"
        )
    port = deployment.port or free_port()
    model_path = _model_for(adapter, deployment, run_dir)
    spec = adapter.launch(deployment, port, model_path)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{deployment.name}.log"
    environment = {**os.environ, **deployment.env, **spec.env, **gpu_environment(deployment)}
    base_url = f"http://127.0.0.1:{port}"
    log.info("starting %s: %s", deployment.name, spec.argv)
    launched = now_ns()
    with open(log_path, "ab") as log_file:
        try:
            process = subprocess.Popen(  # noqa: S603 - argv list built from typed params, no shell
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - needed for PR_SET_PDEATHSIG
            )
        except OSError as error:
            raise DeployError(f"{deployment.name}: cannot run {spec.argv[0]}: {error.strerror}") from None
    fleet._processes[deployment.name] = process
    if on_launched is not None:
        on_launched(deployment.name, process.pid)
    _wait_healthy(adapter, deployment, process, base_url, log_path)
    server = RunningServer(
        name=deployment.name,
        framework=deployment.engine.kind,
        model=deployment.shape or deployment.model,
        served_model=adapter.served_model_name(deployment),
        api_flavour=adapter.api_flavour_for(deployment),
        base_url=base_url,
        port=port,
        pid=process.pid,
        log_path=str(log_path),
        argv=spec.argv,
        launched_ns=launched,
        ready_ns=now_ns(),
        metrics_path=adapter.metrics_path_for(deployment),
        shape_only=deployment.shape is not None,
        model_path=model_path,
        tokenize_flavour=adapter.tokenize_flavour_for(deployment),
        loaded_models_path=adapter.loaded_models_path_for(deployment),
    )
    server.version = _probe_version(adapter, base_url)
    after_ready = getattr(adapter, "after_ready", None)
    if after_ready is not None:
        from servelab.aio import run_sync

        async def _after() -> None:
            async with httpx.AsyncClient(timeout=deployment.startup_timeout_s) as client:
                await after_ready(client, base_url, deployment)

        run_sync(_after())
    fleet.servers[deployment.name] = server
    fleet.save()
    log.info("%s ready in %.1f s at %s", deployment.name, server.ready_s, base_url)
    return server


def _probe_version(adapter: EngineAdapter, base_url: str, headers: dict[str, str] | None = None) -> str:
    from servelab.aio import run_sync

    async def _version() -> str:
        async with httpx.AsyncClient(headers=headers) as client:
            return await adapter.version(client, base_url)

    return run_sync(_version())


def deploy(
    params: Params,
    run_dir: Path,
    check_free_memory: FreeMemoryCheck | None = None,
    on_launched: Callable[[str, int], None] | None = None,
) -> Fleet:
    """Start every deployment, smallest first; on any failure stop what was started and raise.
    `on_launched(name, pid)` is called as each server's process starts (see `start_server`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(run_dir=run_dir)
    try:
        for deployment in start_order(params.deployments):
            if check_free_memory is not None:
                check_free_memory(deployment)
            start_server(deployment, run_dir, fleet, on_launched)
    except BaseException:
        fleet.close()
        raise
    return fleet


def attach(run_dir: Path) -> Fleet | None:
    """The fleet another process of this run started, if it is still up; None otherwise."""
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        servers = {s["name"]: RunningServer(**s) for s in state["servers"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not servers or not all(server.alive() for server in servers.values()):
        return None
    return Fleet(run_dir=run_dir, servers=servers, owned=False)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM into SystemExit in the main thread, so `finally` blocks (and fleet teardown) run."""

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
