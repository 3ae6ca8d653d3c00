"""The interactive lab: one live set of servers per params file, shared by notebooks, re-runs and kernel restarts,
stopped when the lab is closed or idle; and `make lab`'s JupyterLab, reached through its REST API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import nbformat
import psutil
import pytest
from fixtures_run import copy_notebooks_with_one_point_demo
from jupyter_client.manager import start_new_kernel
from servelab import lab
from servelab.run import kernel_name
from servelab.serve.deploy import free_port

REPO = Path(__file__).resolve().parents[2]


def servers_of(folder: Path) -> list[int]:
    """The llama-server processes whose log (their stdout) is under `folder`: this test's, not another's."""
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "llama-server":
            continue
        try:
            if os.readlink(f"/proc/{process.pid}/fd/1").startswith(str(folder)) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return found


def gone(pids: list[int], within_s: float = 120.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def lab_copy(tmp_path: Path) -> Path:
    """notebooks/ and params/ side by side in tmp, the demo params made one point long."""
    copy_notebooks_with_one_point_demo(tmp_path)
    return tmp_path


def run_in_kernel(client, notebook: Path) -> None:
    """Execute every code cell of `notebook`, parameters cell as committed, in the kernel of `client`."""
    errors: list[str] = []

    def keep_errors(message: dict) -> None:
        if message["msg_type"] == "error":
            errors.append("\n".join(message["content"]["traceback"]))

    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "code":
            reply = client.execute_interactive(cell.source, timeout=900, output_hook=keep_errors)
            assert reply["content"]["status"] == "ok", (notebook.name, cell.source, errors)


def test_01_02_03_and_02_again_in_one_kernel_share_one_set_of_servers_until_the_lab_is_closed(lab_copy):
    """The acceptance of the lab: 01, 02 and 03 one after another in one kernel with their default parameters,
    then 02 again, then a kernel restart and 01 again: one llama-server all along, the same process; closing the
    lab stops it and the lab process."""
    notebooks = lab_copy / "notebooks"
    manager, client = start_new_kernel(kernel_name=kernel_name(), cwd=str(notebooks))
    params, outputs = str(notebooks / "../params/demo.yaml"), str(notebooks / "../outputs")
    try:
        seen = []
        for name in ("01_deploy", "02_sweep", "03_gpu_memory", "02_sweep"):
            run_in_kernel(client, notebooks / f"{name}.ipynb")
            seen.append(servers_of(lab_copy))
        manager.restart_kernel(now=True)
        client.wait_for_ready(timeout=120)
        run_in_kernel(client, notebooks / "01_deploy.ipynb")
        seen.append(servers_of(lab_copy))
        assert all(len(pids) == 1 for pids in seen) and len({pids[0] for pids in seen}) == 1, seen
        runs = [p for p in (lab_copy / "outputs").iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert len(runs) == 1, runs
        lab_pid = lab.read_state(lab.state_path(params, outputs)).pid
        client.execute_interactive("lab.close(params_path, outputs_dir)", timeout=120)
        assert gone(seen[0] + [lab_pid]) and servers_of(lab_copy) == []
        assert lab.read_state(lab.state_path(params, outputs)) is None
    finally:
        lab.close(params, outputs)
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_a_lab_stops_its_servers_once_idle_and_servelab_lab_stop_closes_another(tmp_path, capsys):
    from fixtures_run import write_params
    from servelab.cli import main

    params, outputs = str(write_params(tmp_path, "idle")), str(tmp_path / "outputs")
    idle = lab.experiment(params, "", outputs, idle_timeout_s=2.0)
    pids = [server.pid for server in idle.servers] + [lab.read_state(lab.state_path(params, outputs)).pid]
    assert gone(pids), "the idle lab kept its servers"
    assert lab.read_state(lab.state_path(params, outputs)) is None
    busy = lab.experiment(params, "", outputs)
    assert busy.run_dir != idle.run_dir
    assert main(["lab", "status", params, "--outputs", outputs]) == 0
    assert busy.servers[0].base_url in capsys.readouterr().out
    assert main(["lab", "stop", params, "--outputs", outputs]) == 0
    assert "stopped" in capsys.readouterr().out
    assert gone([server.pid for server in busy.servers], within_s=5.0)


def test_03_analyses_without_starting_servers_and_names_what_to_run_when_there_is_no_run(tmp_path):
    from fixtures_run import write_params

    params = str(write_params(tmp_path))
    with pytest.raises(lab.LabError, match="run 01_deploy or 02_sweep first"):
        lab.recorded(params, "", str(tmp_path / "outputs"))
    assert not (tmp_path / "outputs" / lab.LABS_DIR).exists() and servers_of(tmp_path) == []


def test_make_lab_opens_jupyterlab_as_root_on_loopback_with_a_token_and_serves_the_notebooks(tmp_path):
    """`make lab` runs scripts/lab.sh; started here on a free loopback port, it prints its URL with the token,
    refuses a request without the token, and serves 01_deploy through the contents API."""
    port = free_port()
    environment = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    process = subprocess.Popen(
        ["bash", "scripts/lab.sh", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"],
        cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    lines: list[str] = []
    url = re.compile(rf"http://127\.0\.0\.1:{port}/lab\?token=(\w+)")
    found = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if url.search(line):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(timeout=300), "".join(lines)
        token = next(match.group(1) for line in lines if (match := url.search(line)))
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/contents/01_deploy.ipynb", timeout=30).status_code == 403
        response = httpx.get(f"{base}/api/contents/01_deploy.ipynb", headers={"Authorization": f"token {token}"}, timeout=30)
        assert response.status_code == 200
        notebook = response.json()
        assert notebook["type"] == "notebook" and notebook["content"]["cells"][0]["source"].startswith("# 01")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
