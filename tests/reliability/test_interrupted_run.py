"""Ctrl-C in the middle of a real `servelab run`, delivered as a terminal delivers it: SIGINT to the foreground
process group (the CLI; kernels and engines run in sessions of their own). The run stops its servers, keeps its
records, and says so in one line that names the run id `--resume` takes, with no traceback around it.
(tests/integration/test_interrupt_and_death.py resumes such a run to completion.)"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from fault_harness import PYTHON, REPO, lines, wait_for
from fixtures_run import write_params
from servelab.records import POINTS_FILE, REQUESTS_FILE, read_jsonl

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _run_dir(outputs: Path) -> Path | None:
    runs = [p for p in outputs.glob("*/") if (p / "manifest.json").exists()]
    return runs[0] if runs else None


def _second_point_underway(outputs: Path) -> bool:
    run_dir = _run_dir(outputs)
    if run_dir is None:
        return False
    marks = list(read_jsonl(run_dir / POINTS_FILE)) if (run_dir / POINTS_FILE).exists() else []
    return any(m["status"] == "done" for m in marks) and sum(m["status"] == "started" for m in marks) >= 2


def test_ctrl_c_mid_run_prints_one_clear_line_with_the_run_id_and_no_traceback(tmp_path):
    """Expectation: SIGINT to the process group of `servelab run` while its second point runs ends it with exit
    130 and, on stderr, the line "interrupted; completed requests are on disk, continue with `servelab run ...
    --resume <the run's id>`", not the literal RUN_ID; no traceback (ZMQ's, nbclient's DeadKernelError) and no
    ERROR line (papermill's "Kernel died") around it; the engine it started is gone; the first point's records
    are on disk."""
    params = write_params(tmp_path, name="ctrlc", requests_per_point=3, languages=["en"])
    outputs = tmp_path / "outputs"
    environment = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    process = subprocess.Popen(
        [PYTHON, "-m", "servelab.cli", "run", str(params), "--outputs", str(outputs)],
        cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        wait_for(lambda: _second_point_underway(outputs), "the second load point to start", 400)
        engines = [p for p in psutil.Process(process.pid).children(recursive=True) if "llama-server" in p.name()]
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    run_dir = _run_dir(outputs)
    assert run_dir is not None
    assert process.returncode == 130, stderr[-3000:]
    console = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("load points")]
    assert f"servelab: interrupted; completed requests are on disk, continue with `servelab run {params} --resume {run_dir.name}`" in console
    assert "RUN_ID" not in stderr
    assert not [line for line in console if "Traceback" in line or line.startswith("ERROR") or "Error" in line], console
    assert engines and not psutil.wait_procs(engines, timeout=60)[1]
    assert lines(run_dir / REQUESTS_FILE) >= 4  # the first point: 3 measured and 1 warm-up
