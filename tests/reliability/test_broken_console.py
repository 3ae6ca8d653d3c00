"""The console going away under a run: its stderr is a pipe whose reader has exited (the parent that started
`servelab run` died, or `servelab run ... 2>&1 | head` stopped reading). Found when a test runner was killed
mid-run: the resumed run hung for ever in the progress bar's lock, its engine still running."""

from __future__ import annotations

import os
import sys
import threading

from fault_harness import sweep_params
from servelab.run import PointProgress


def test_the_progress_bar_survives_a_broken_stderr_pipe_and_lets_the_run_end(tmp_path, monkeypatch):
    """Expectation: with stderr a real pipe whose read end is closed (every write raises BrokenPipeError), the
    point progress bar starts, follows and closes without raising, and its exit returns (the run goes on to
    stop its servers) instead of waiting for ever on a lock a failed write left held. The join bound only
    stops a hang; it is not a timing assertion."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    broken = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", broken)
    outcome: list[str] = []

    def use_the_bar() -> None:
        with PointProgress(sweep_params(), tmp_path, interval_s=0.01) as progress:
            threading.Event().wait(0.1)
            progress.bar.update(1)
        outcome.append("returned")

    worker = threading.Thread(target=use_the_bar, daemon=True)
    worker.start()
    worker.join(timeout=60)
    monkeypatch.undo()
    assert outcome == ["returned"], "the progress bar hung (or raised) on a broken stderr"
