"""Nothing is lost: completed requests reach the disk before the next point starts, a process killed at a point's
end keeps them all, and a crash mid-point leaves a folder that the next sweep completes exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap

import pytest
from fault_harness import PYTHON, REPO, check_nothing_lost, emitter, fleet_at, sweep_params, write_yaml
from servelab import records
from servelab.measure.sweep import run_sweep
from servelab.records import POINTS_FILE, REQUESTS_FILE, latest_points, read_jsonl

pytestmark = pytest.mark.slow


def test_requests_are_fsynced_to_disk_before_the_next_point_starts(tmp_path, monkeypatch):
    """Expectation: between the last request of one point and the 'started' mark of the next, requests.jsonl is
    fsynced (os.fsync on its descriptor) with every record of the point written before it. The points have
    fewer records than the writer's batch (64), so only the sweep's own sync between points can do it."""
    events: list[tuple[str, str]] = []
    real_fsync, real_write = os.fsync, records.JsonlWriter.write

    def fsync(fd: int) -> None:
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def write(self: records.JsonlWriter, record: object) -> None:
        real_write(self, record)
        status = getattr(record, "status", None)
        events.append(("write", f"{self.path.name}:{status}" if status else self.path.name))

    monkeypatch.setattr(records.os, "fsync", fsync)
    monkeypatch.setattr(records.JsonlWriter, "write", write)
    params = sweep_params(load=[{"kind": "concurrency", "values": [1, 2, 3]}], requests_per_point=5)
    with emitter() as (url, process):
        run_sweep(params, tmp_path, fleet_at(tmp_path, url, process.pid), progress=False)
    starts = [i for i, event in enumerate(events) if event == ("write", f"{POINTS_FILE}:started")]
    assert len(starts) == 3
    for previous, start in zip(starts, starts[1:], strict=False):
        between = events[previous:start]
        last_request = max(i for i, event in enumerate(between) if event == ("write", REQUESTS_FILE))
        assert ("fsync", REQUESTS_FILE) in between[last_request:], f"no fsync of {REQUESTS_FILE} before point {starts.index(start) + 1}"
    check_nothing_lost(tmp_path, warmup_requests=1)


KILL_AT_POINT_END = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {harness!r})
from fault_harness import fleet_at
from servelab import records
from servelab.params import load_params
from servelab.measure.sweep import run_sweep

real_write = records.JsonlWriter.write

def write(self, record):
    real_write(self, record)
    if getattr(record, "status", "started") != "started":
        os.kill(os.getpid(), signal.SIGKILL)  # the moment the first point's end mark is written

records.JsonlWriter.write = write
run = Path({run!r})
run_sweep(load_params({params!r}), run, fleet_at(run, {url!r}, {pid}), progress=False)
"""


def test_a_process_killed_right_after_a_point_ends_has_every_record_of_it_on_disk_and_resume_finishes(tmp_path):
    """Expectation: a sweep process SIGKILLed the instant its first point's end mark is written leaves all of
    that point's records on disk (warm-up and measured, indices without gaps), since each record is written
    through before the next; a second sweep then runs only the points left and records each exactly once."""
    params = sweep_params(load=[{"kind": "concurrency", "values": [2, 3]}], requests_per_point=12)
    params_path = write_yaml(tmp_path / "kill.yaml", params)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with emitter() as (url, process):
        script = KILL_AT_POINT_END.format(
            harness=str(REPO / "tests" / "reliability"), run=str(run_dir), params=str(params_path), url=url, pid=process.pid
        )
        killed = subprocess.run([PYTHON, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        (first,) = latest_points(run_dir).values()
        assert first.status == "done" and first.requests == 12
        assert sum(1 for r in read_jsonl(run_dir / REQUESTS_FILE) if r["point_id"] == first.point_id) == 12 + 1
        check_nothing_lost(run_dir, warmup_requests=1)
        run_sweep(params, run_dir, fleet_at(run_dir, url, process.pid), progress=False)
    assert [p.status for p in latest_points(run_dir).values()] == ["done", "done"]
    assert check_nothing_lost(run_dir, warmup_requests=1) == 2 * (12 + 1)
