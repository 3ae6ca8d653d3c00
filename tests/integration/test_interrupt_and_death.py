"""A batch run survives its engine dying and being interrupted: nothing completed is lost, and resume finishes it."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fixtures_run import write_params
from servelab.records import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def _servelab(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "servelab.cli", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(condition, timeout_s: float = 240.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _run_dir(outputs: Path) -> Path:
    runs = [p for p in outputs.glob("*/") if (p / "manifest.json").exists()]
    return runs[0] if runs else outputs / "missing"


def _lines(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0


def test_engine_killed_mid_sweep_keeps_every_completed_request_and_names_the_engine(tmp_path):
    params = write_params(tmp_path, name="death", requests_per_point=40, output_tokens=24)
    outputs = tmp_path / "outputs"
    process = _servelab("run", str(params), "--outputs", str(outputs), cwd=REPO)
    _wait_for(lambda: _lines(_run_dir(outputs) / "requests.jsonl") >= 6, what="six completed requests")
    run_dir = _run_dir(outputs)
    server_pid = json.loads((run_dir / "deployments.json").read_text())["servers"][0]["pid"]
    os.kill(server_pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert "smollm2 (llamacpp, pid" in stderr and "died" in stderr
    assert "Last lines of" in stderr and "smollm2.log" in stderr
    assert "Traceback" not in stderr
    records = list(read_jsonl(run_dir / "requests.jsonl"))
    with open(run_dir / "requests.jsonl", encoding="utf-8") as handle:
        assert all(json.loads(line) for line in handle)
    completed = [r for r in records if r["error_class"] is None]
    server_completed = (run_dir / "logs" / "smollm2.log").read_text(errors="replace").count("stop processing")
    concurrency = 2
    assert server_completed - concurrency <= len(completed) <= server_completed
    assert all(r["end_ns"] > r["actual_send_ns"] and r["output_tokens"] == 24 for r in completed)


def test_sigint_mid_grid_then_resume_records_every_point_exactly_once(tmp_path):
    params = write_params(tmp_path, name="resume", requests_per_point=6)
    outputs = tmp_path / "outputs"
    process = _servelab("run", str(params), "--outputs", str(outputs), cwd=REPO)

    def second_point_started() -> bool:
        marks = list(read_jsonl(_run_dir(outputs) / "points.jsonl"))
        return any(m["status"] == "done" for m in marks) and sum(m["status"] == "started" for m in marks) >= 2

    _wait_for(second_point_started, what="the second load point to start")
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr
    run_dir = _run_dir(outputs)
    marks = list(read_jsonl(run_dir / "points.jsonl"))
    assert not all(m["status"] == "done" for m in marks if m["status"] != "started") or len(marks) < 8

    resumed = _servelab("run", str(params), "--outputs", str(outputs), "--resume", run_dir.name, cwd=REPO)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert "report.html" in stdout
    records = [r for r in read_jsonl(run_dir / "requests.jsonl")]
    per_point = collections.Counter(r["point_id"] for r in records if not r["warmup"])
    assert sorted(per_point) == sorted(
        f"smollm2/{language}/concurrency-{c}" for language in ("en", "ko") for c in (1, 2)
    )
    assert set(per_point.values()) == {6}
    keys = [(r["point_id"], r["request_index"]) for r in records]
    assert len(keys) == len(set(keys))
