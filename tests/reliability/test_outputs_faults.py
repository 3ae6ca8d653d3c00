"""The outputs disk fills up or is read-only: a clear OutputsError, no corrupt file, and a run --resume finishes.

How the faults are made (see docs/reliability.md): as root, a 64 KiB tmpfs is mounted over the run folder
(`mount -t tmpfs -o size=64k`) and later grown (`mount -o remount,size=...`), as freeing space would; without
root, requests.jsonl is a symlink to /dev/full, which fails every write with ENOSPC. A read-only folder is a
read-only bind mount as root (root ignores chmod), else `chattr +i`, else chmod 0555.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from fault_harness import (
    check_nothing_lost,
    emitter,
    fleet_at,
    grow_disk,
    read_only,
    sweep_params,
    tiny_disk,
    writable,
    write_yaml,
)
from servelab.cli import main
from servelab.errors import OutputsError
from servelab.measure.sweep import run_sweep
from servelab.records import REQUESTS_FILE, JsonlWriter, latest_points

pytestmark = pytest.mark.slow


def test_outputs_disk_full_mid_sweep_raises_outputs_error_leaves_whole_lines_and_resume_finishes(tmp_path):
    """Expectation: when the disk holding the run fills in the middle of a point, run_sweep stops with
    OutputsError naming requests.jsonl, 'No space left on device' and the fix (--resume), not an OSError
    traceback. Every file holds whole JSON lines only (the torn end of the failed line is cut back), so the
    folder stays readable. Once there is room again, running the sweep again drops the unfinished point's
    requests and reruns it: every point ends with its requests on disk exactly once."""
    run_dir = tmp_path / "run"
    params = sweep_params(load=[{"kind": "concurrency", "values": [4, 2]}], requests_per_point=150, output_tokens=2)
    with tiny_disk(run_dir, "64k") as mounted, emitter() as (url, process):
        if not mounted:
            (run_dir / REQUESTS_FILE).symlink_to("/dev/full")
        fleet = fleet_at(run_dir, url, process.pid)
        with pytest.raises(OutputsError) as caught:
            run_sweep(params, run_dir, fleet, progress=False)
        message = str(caught.value)
        assert str(run_dir / REQUESTS_FILE) in message and "No space left on device" in message and "--resume" in message
        if not mounted:
            (run_dir / REQUESTS_FILE).unlink()  # /dev/full reads as endless zeros: take it away before reading
        check_nothing_lost(run_dir, warmup_requests=1)
        assert any(point.status == "started" for point in latest_points(run_dir).values())
        if mounted:
            grow_disk(run_dir, "16m")
        run_sweep(params, run_dir, fleet, progress=False)
        points = latest_points(run_dir)
        assert [p.status for p in points.values()] == ["done", "done"]
        assert check_nothing_lost(run_dir, warmup_requests=1) == 2 * (150 + 1)


def test_a_jsonl_write_that_fails_part_way_is_cut_back_to_the_last_whole_line(tmp_path):
    """Expectation: when a line only partly fits on a full disk, JsonlWriter raises OutputsError and truncates the
    file to the last whole line; the lines written before are intact."""
    with tiny_disk(tmp_path / "disk", "8k") as mounted:
        if not mounted:
            pytest.skip("needs root to mount a tmpfs (the /dev/full case is covered above)")
        path = tmp_path / "disk" / "requests.jsonl"
        writer = JsonlWriter(path)
        written = 0
        with pytest.raises(OutputsError, match="No space left on device"):
            while True:
                writer.write({"i": written, "padding": "x" * 700})
                written += 1
        raw = path.read_bytes()
        assert raw.endswith(b"\n") and raw.count(b"\n") == written > 5
        with contextlib.suppress(OutputsError):
            writer.close()


def test_a_torn_last_line_left_by_a_crash_is_cut_off_before_the_next_append(tmp_path):
    """Expectation: a crash mid-write leaves half a line; the next JsonlWriter on that file cuts it off, so the
    next record starts on its own line instead of gluing onto the torn one (and being lost with it)."""
    path = tmp_path / "points.jsonl"
    path.write_bytes(b'{"point_id": "a", "status": "started"}\n{"point_id": "a", "sta')
    with JsonlWriter(path) as writer:
        writer.write({"point_id": "b", "status": "started"})
    assert path.read_bytes() == b'{"point_id": "a", "status": "started"}\n{"point_id": "b", "status": "started"}\n'


def test_a_read_only_outputs_folder_is_refused_by_the_cli_with_one_message_and_nothing_started(tmp_path):
    """Expectation: `servelab run` into a read-only outputs folder exits 2 with one message, 'servelab: cannot
    create the run folder ...: Read-only file system' (or the chattr/chmod fallback's reason), before any engine starts, with
    no traceback; the folder is left empty."""
    params_path = write_yaml(tmp_path / "ro.yaml", sweep_params())
    outputs = tmp_path / "outputs"
    with read_only(outputs) as how:
        if writable(outputs):
            pytest.skip(f"{how} did not make {outputs} read-only on this machine")
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = main(["run", str(params_path), "--outputs", str(outputs)])
        assert code == 2, stderr.getvalue()
        lines = stderr.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("servelab: cannot create the run folder"), lines
        assert any(reason in lines[0] for reason in ("Read-only file system", "Permission denied", "Operation not permitted"))
        assert "Traceback" not in stderr.getvalue()
        assert os.listdir(outputs) == []


def test_a_jsonl_file_in_a_read_only_folder_is_refused_on_open_with_the_path(tmp_path):
    """Expectation: opening requests.jsonl in a read-only run folder raises OutputsError naming the file."""
    folder = tmp_path / "run"
    with read_only(folder) as how:
        if writable(folder):
            pytest.skip(f"{how} did not make {folder} read-only on this machine")
        with pytest.raises(OutputsError, match=f"cannot open {Path(folder / REQUESTS_FILE)} for appending"):
            JsonlWriter(folder / REQUESTS_FILE)
