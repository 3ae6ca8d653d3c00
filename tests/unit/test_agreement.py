"""The comparison with `vllm bench serve`: its long-lived bench process where vLLM is absent (this machine, CI),
and the report's view of turns recorded on the H200.

The bench process's success path needs vLLM and runs on the GPU machine only (benchmarks/gpu_truth.py); here the
worker is real and so is the interpreter: it must fail at once, with a message that names the cause and the log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from servelab import plots, report_tables
from servelab.agreement import AGREEMENT_TURNS_FILE, VllmBench
from servelab.errors import VllmBenchError

TURNS = Path(__file__).parents[1] / "data" / "recorded" / "h200-agreement-turns.csv"


def test_without_vllm_the_bench_worker_fails_at_once_naming_the_import_and_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "vllm-bench.log"
    # A hang would end in 'no reply within 60 s', a different message.
    with pytest.raises(VllmBenchError) as caught, VllmBench(sys.executable, log_path, timeout_s=60):
        pass
    assert "cannot import vLLM's benchmark" in str(caught.value) and str(log_path) in str(caught.value)
    assert "ModuleNotFoundError" in log_path.read_text(), "vLLM's side of the story goes to the log, not the replies"


def test_the_report_plots_each_turn_of_each_client_one_panel_per_concurrency(tmp_path: Path) -> None:
    (tmp_path / AGREEMENT_TURNS_FILE).write_bytes(TURNS.read_bytes())
    turns = report_tables.agreement_turns(tmp_path)
    assert len(turns) == 24 and set(turns["client"]) == {"servelab", "vllm-bench"}
    figure = plots.agreement_turns(turns)
    panels = [axis for axis in figure.axes if axis.collections]
    assert sorted(axis.get_title() for axis in panels) == ["concurrency = 1", "concurrency = 16", "concurrency = 64"]
    assert sum(len(collection.get_offsets()) for axis in panels for collection in axis.collections) == 24


def test_a_run_without_a_comparison_shows_that_instead_of_an_empty_plot(tmp_path: Path) -> None:
    figure = plots.agreement_turns(report_tables.agreement_turns(tmp_path))
    assert "no comparison" in " ".join(text.get_text() for axis in figure.axes for text in axis.texts)

