"""The memory report on a real run recorded on the H200: SGLang serving the TinyLlama-1.1B shape alone, whose
footprint grows under load beyond what mem_fraction_static reserves (tests/data/recorded/README.md)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest
from servelab.analyse import frames as tables
from servelab.analyse import memory_tables as memory_report
from servelab.manifest import read_params
from servelab.report import tables as report_tables

RUN = Path(__file__).parents[1] / "data" / "recorded" / "h200-sglang-run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("h200-sglang-run")
    for name in ("points.jsonl", "manifest.json"):
        shutil.copy(RUN / name, folder / name)
    with gzip.open(RUN / "gpu.csv.gz", "rb") as packed, open(folder / "gpu.csv", "wb") as plain:
        shutil.copyfileobj(packed, plain)
    return folder


def test_the_planner_is_set_against_the_idle_footprint_of_the_phases_table_and_against_the_peak(run_dir: Path) -> None:
    samples, points = tables.memory_frame(run_dir), tables.points_frame(run_dir)
    comparison = memory_report.planner_comparison(read_params(run_dir), samples, points).set_index("deployment")
    phases = memory_report.phases(samples, points)
    row = comparison.loc["tinyllama-sglang"]
    # One idle footprint in the notebook: the planner's 'measured' is the phases table's idle, outside load points.
    assert row["measured_mib"] == pytest.approx(phases.loc["tinyllama-sglang", "idle_mib (GPU)"])
    assert row["measured_mib"] == pytest.approx(22_250.0)
    # Under load SGLang took 622 MiB more than it reserved: the peak is the figure a co-located model must respect.
    assert row["peak_mib"] == pytest.approx(22_872.0)
    assert row["peak_error_pct"] == pytest.approx(100 * (row["predicted_mib"] - 22_872.0) / 22_872.0, abs=0.01)
    assert row["peak_error_pct"] < row["error_pct"] < 0
    assert "of the peak under load" in memory_report.planner_sentence(comparison.reset_index())


def test_the_report_states_the_planner_and_the_attribution_in_words(run_dir: Path) -> None:
    samples, points = tables.memory_frame(run_dir), tables.points_frame(run_dir)
    table = report_tables.memory(run_dir, samples, points)
    assert table.loc["tinyllama-sglang", "peak MiB"] == pytest.approx(22_872.0)
    text = report_tables.memory_sentences(samples, table)
    assert "of the peak under load" in text
    assert "Attribution: over 1,686 listings" in text and "0.0 % of it belonged to no deployment" in text


def test_a_run_without_memory_samples_gets_a_sentence_not_an_error(tmp_path: Path) -> None:
    samples = tables.memory_frame(tmp_path)
    assert report_tables.memory_sentences(samples, pd.DataFrame({"note": ["nothing sampled"]})) == "No memory samples in this run."
