"""10,000 concurrent streams without running out of file descriptors, or a clear refusal before anything starts.

Open-file limits are per process, so each case runs in a subprocess that sets its own RLIMIT_NOFILE first; the
pytest process keeps its limits. Everything stays on loopback.
"""

from __future__ import annotations

import json
import resource
import subprocess
import textwrap

import pytest
from fault_harness import PYTHON, REPO, check_nothing_lost, emitter, sweep_params, write_yaml
from servelab.records import read_requests

pytestmark = pytest.mark.slow
STREAMS = 10_000


def _python(script: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=timeout_s, cwd=REPO, check=False
    )


def test_a_hard_open_file_limit_below_the_concurrency_is_refused_by_the_cli_before_anything_starts(tmp_path):
    """Expectation: with a hard RLIMIT_NOFILE of 256 and a sweep at concurrency 10,000, `servelab run` exits 2
    with one message naming the cap (256), what is needed, and the fix (ulimit, or lower the concurrency),
    before it creates a run folder or starts an engine; no traceback."""
    params = write_yaml(tmp_path / "wide.yaml", sweep_params(load=[{"kind": "concurrency", "values": [8, STREAMS]}]))
    outputs = tmp_path / "outputs"
    done = _python(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from servelab.cli import main
        sys.exit(main(["run", {str(params)!r}, "--outputs", {str(outputs)!r}]))
        """,
        timeout_s=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("servelab: 10,000 concurrent connections need about 10,064 open files")
    assert "at most 256" in done.stderr and "ulimit" in done.stderr and "lower the sweep's concurrency" in done.stderr
    assert "Traceback" not in done.stderr
    assert not outputs.exists()


def test_the_point_runner_refuses_the_same_grid_before_its_first_point_starts(tmp_path):
    """Expectation: inside a notebook kernel the sweep itself checks: run_sweep raises ClientCapacityError
    before marking any point started, so the run folder holds no half-run point."""
    params = write_yaml(tmp_path / "wide.yaml", sweep_params(load=[{"kind": "concurrency", "values": [8, STREAMS]}]))
    done = _python(
        f"""
        import resource
        from pathlib import Path
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from servelab.serve.deploy import Fleet
        from servelab.errors import ClientCapacityError
        from servelab.params import load_params
        from servelab.measure.sweep import run_sweep
        try:
            run_sweep(load_params({str(params)!r}), Path({str(tmp_path)!r}), Fleet(run_dir=Path({str(tmp_path)!r})), progress=False)
        except ClientCapacityError as error:
            print("refused:", error)
        """,
        timeout_s=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("refused: 10,000 concurrent connections"), done.stderr
    assert not (tmp_path / "points.jsonl").exists() or (tmp_path / "points.jsonl").stat().st_size == 0


def test_ten_thousand_concurrent_streams_raise_the_soft_limit_and_every_one_completes(tmp_path):
    """Expectation: a process started with a soft RLIMIT_NOFILE of 1,024 (and a higher hard limit) runs one
    10,000-stream point against the emitter (--workers 2, 2 tokens at 1 ms ITL) through the real point
    runner: the soft limit is raised to the hard limit at the start, no stream fails for want of descriptors,
    and all 10,000 records (plus the warm-up) are on disk."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < STREAMS + 200:
        pytest.skip(f"the hard open-file limit here is {hard}; 10,000 streams need about {STREAMS + 64}")
    params = sweep_params(
        load=[{"kind": "concurrency", "values": [STREAMS]}], requests_per_point=STREAMS, output_tokens=2, request_timeout_s=120
    )
    params_path = write_yaml(tmp_path / "streams.yaml", params)
    with emitter("--workers", "2", "--itl-ms", "1") as (url, process):
        done = _python(
            f"""
            import json, resource
            from pathlib import Path
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
            import sys
            sys.path.insert(0, {str(REPO / "tests" / "reliability")!r})
            from fault_harness import fleet_at
            from servelab.params import load_params
            from servelab.measure.sweep import run_sweep
            run = Path({str(tmp_path)!r})
            run_sweep(load_params({str(params_path)!r}), run, fleet_at(run, {url!r}, {process.pid}), progress=False)
            print(json.dumps({{"soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "hard": hard}}))
            """,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    limits = json.loads(done.stdout.strip().splitlines()[-1])
    assert limits["soft"] == limits["hard"] or limits["hard"] == resource.RLIM_INFINITY
    records = read_requests(tmp_path)
    failed = [r for r in records if not r.ok]
    assert not failed, f"{len(failed)} streams failed, e.g. {failed[0].error_class}: {failed[0].error_message}"
    assert check_nothing_lost(tmp_path, warmup_requests=1) == STREAMS + 1
