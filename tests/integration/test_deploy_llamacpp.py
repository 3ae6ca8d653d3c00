"""Native deploy of the real embedded engine: start, health, teardown on every exit path, clear errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import embedded_params
from servelab.errors import DeployError, EngineError
from servelab.measure.clients import Target
from servelab.serve.deploy import attach, deploy, port_is_free

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_deploy_serves_completions_then_close_stops_the_server_and_frees_its_port(tmp_path):
    fleet = deploy(embedded_params(), tmp_path)
    server = fleet["smollm2"]
    response = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": server.served_model, "prompt": "Hello", "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 4
    assert (tmp_path / "logs" / "smollm2.log").stat().st_size > 0
    assert attach(tmp_path) is not None
    fleet.close()
    assert _gone(server.pid)
    assert port_is_free(server.port)
    assert attach(tmp_path) is None


OWNER = textwrap.dedent(
    """
    import signal, sys, time
    # Ctrl-C as a terminal delivers it: a suite started in the background of a non-interactive shell inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from conftest import embedded_params
    from servelab.serve.deploy import deploy, stop_on_signals
    with stop_on_signals():
        fleet = deploy(embedded_params(), Path({run!r}))
        try:
            print(fleet["smollm2"].pid, flush=True)
            time.sleep(600)
        finally:
            fleet.close()
    """
)


def _owner(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    script = OWNER.format(tests=str(REPO / "tests"), run=str(tmp_path))
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.strip().isdigit(), f"owner printed {line!r}"
    return owner, int(line)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_no_server_process_survives_its_owner_being_killed(tmp_path, signum):
    owner, server_pid = _owner(tmp_path)
    assert psutil.pid_exists(server_pid)
    os.kill(owner.pid, signum)
    owner.wait(timeout=30)
    assert _gone(server_pid), f"llama-server {server_pid} survived {signal.Signals(signum).name} of its owner"


def test_a_taken_port_is_refused_before_launch_with_the_port_and_the_fix(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        params = embedded_params()
        deployment = params.deployments[0].model_copy(update={"port": port})
        params = params.model_copy(update={"deployments": (deployment,)})
        with pytest.raises(DeployError, match=f"port {port}.*already in use"):
            deploy(params, tmp_path)
    assert not (tmp_path / "logs" / "smollm2.log").exists()


def test_an_engine_that_exits_at_start_is_reported_with_its_last_log_lines(tmp_path):
    params = embedded_params()
    deployment = params.deployments[0].model_copy(update={"model": str(tmp_path / "missing.gguf")})
    params = params.model_copy(update={"deployments": (deployment,)})
    with pytest.raises(EngineError) as caught:
        deploy(params, tmp_path)
    message = str(caught.value)
    assert "smollm2 (llamacpp) exited" in message
    assert "missing.gguf" in message


def test_an_engine_slower_than_its_startup_timeout_is_stopped_and_reported(tmp_path):
    params = embedded_params()
    deployment = params.deployments[0].model_copy(update={"startup_timeout_s": 0.001})
    params = params.model_copy(update={"deployments": (deployment,)})
    before = {p.pid for p in psutil.process_iter() if "llama-server" in p.name()}
    with pytest.raises(EngineError, match="startup_timeout_s=0.001"):
        deploy(params, tmp_path)
    time.sleep(0.5)
    after = {p.pid for p in psutil.process_iter() if "llama-server" in p.name()}
    assert after <= before


def test_the_target_of_a_running_server_names_the_model_as_the_adapter_serves_it(embedded_server):
    target = Target.for_server(embedded_server)
    assert (target.deployment, target.framework, target.model) == ("smollm2", "llamacpp", "smollm2")
    assert (target.served_model, target.api_flavour, target.base_url) == (
        "smollm2",
        "openai",
        embedded_server.base_url,
    )
