"""The real llama-server killed (SIGKILL) or hung (SIGSTOP) while its streams are in flight.

Each test starts its own server (the shared one must survive), runs a real sweep over two points and injects
the fault from a watcher thread once the first records are on disk. The slow-start case (an engine slower than
its startup timeout) is tests/integration/test_deploy_llamacpp.py::
test_an_engine_slower_than_its_startup_timeout_is_stopped_and_reported; the CLI's message for a dead engine is
tests/integration/test_interrupt_and_death.py.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import embedded_params
from fault_harness import check_nothing_lost, lines
from servelab.errors import EngineError
from servelab.measure.sweep import run_sweep
from servelab.params import Params, Policy
from servelab.records import POINTS_FILE, REQUESTS_FILE, latest_points, read_jsonl, read_requests
from servelab.serve.deploy import deploy

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _params(policy: str, **sweep: object) -> Params:
    params = embedded_params(load=[{"kind": "concurrency", "values": [2, 1]}], **sweep)
    return params.model_copy(update={"policy": Policy(on_engine_death=policy)})  # type: ignore[arg-type]


def _watch(condition: Callable[[], bool], action: Callable[[], None], stop: threading.Event) -> threading.Thread:
    """Run `action` once `condition()` holds (polled every 10 ms) unless `stop` is set first."""

    def follow() -> None:
        while not stop.wait(0.01):
            if condition():
                action()
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread


def _point_ended(run_dir: Path) -> bool:
    return any(mark["status"] != "started" for mark in read_jsonl(run_dir / POINTS_FILE))


@pytest.mark.parametrize("policy", ["continue", "abort"])
def test_engine_sigkilled_mid_stream_loses_no_request_and_the_run_follows_the_policy(tmp_path, policy):
    """Expectation: SIGKILL of llama-server while streams are in flight. The streams in flight end as
    connection_reset and later requests as connect errors, each a record on disk; the point is marked aborted
    ('smollm2 died during this point'). Under on_engine_death=continue the sweep goes on: the second point
    runs, is aborted too (its engine is gone), and run_sweep returns. Under abort, run_sweep raises
    EngineError naming the engine and its log, and the second point never starts."""
    params = _params(policy, requests_per_point=6, output_tokens=48, request_timeout_s=60)
    fleet = deploy(params, tmp_path)
    server = fleet["smollm2"]
    stop = threading.Event()
    try:
        _watch(lambda: lines(tmp_path / REQUESTS_FILE) >= 2, lambda: os.kill(server.pid, signal.SIGKILL), stop)
        if policy == "abort":
            with pytest.raises(EngineError, match=r"smollm2 \(llamacpp, pid \d+\) died during point") as caught:
                run_sweep(params, tmp_path, fleet, progress=False)
            assert "smollm2.log" in str(caught.value)
        else:
            run_sweep(params, tmp_path, fleet, progress=False)
    finally:
        stop.set()
        fleet.close()
    points = latest_points(tmp_path)
    expected = ["aborted", "aborted"] if policy == "continue" else ["aborted"]
    assert [p.status for p in points.values()] == expected
    assert all(p.message == "smollm2 died during this point" for p in points.values())
    failed = [r for r in read_requests(tmp_path) if not r.ok]
    assert failed and {r.error_class for r in failed} <= {"connection_reset", "connect"}
    check_nothing_lost(tmp_path, warmup_requests=1)


def test_engine_hung_by_sigstop_times_out_its_requests_and_the_run_goes_on_once_it_wakes(tmp_path):
    """Expectation: a SIGSTOPped llama-server still accepts connections but answers nothing. Every request in
    flight or sent while it is stopped ends as a timeout after request_timeout_s (1.5 s here; the bound below
    only stops a hang), each a record on disk; the point is marked failed. A hung engine is not a dead one, so
    even on_engine_death=abort does not abort: after SIGCONT the second point completes and is marked done."""
    timeout_s = 1.5
    params = _params("abort", requests_per_point=4, output_tokens=16, request_timeout_s=timeout_s)
    fleet = deploy(params, tmp_path)
    server = fleet["smollm2"]
    stop = threading.Event()
    try:
        _watch(lambda: lines(tmp_path / REQUESTS_FILE) >= 1, lambda: os.kill(server.pid, signal.SIGSTOP), stop)
        _watch(lambda: _point_ended(tmp_path), lambda: os.kill(server.pid, signal.SIGCONT), stop)
        run_sweep(params, tmp_path, fleet, progress=False)
    finally:
        stop.set()
        os.kill(server.pid, signal.SIGCONT)
        fleet.close()
    first, second = latest_points(tmp_path).values()
    assert (first.status, second.status) == ("failed", "done")
    hung = [r for r in read_requests(tmp_path) if r.point_id == first.point_id and not r.warmup]
    assert len(hung) == 4 and {r.error_class for r in hung} == {"timeout"}
    assert all((r.end_ns - r.actual_send_ns) / 1e9 < timeout_s + 10 for r in hung)
    check_nothing_lost(tmp_path, warmup_requests=1)
