"""The report's tables and page on recorded runs (tests/data/recorded/README.md): the ranking by the figure the params
name, numbers as a reader reads them, the validity panel with the client's ceiling wired in, sections only where
their data exist, and an export that refuses a missing figure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from servelab.analyse import frames
from servelab.errors import OutputsError
from servelab.params import parse_params
from servelab.report import tables
from servelab.report.display import percent, signed_percent, table_html
from servelab.report.html import check_figures, report_blocks
from servelab.report.sections import RunReport

RECORDED = Path(__file__).parents[1] / "data" / "recorded"
VLLM = RECORDED / "h200-vllm-colocated-run"
SGLANG = RECORDED / "h200-sglang-run"


@pytest.fixture(scope="module")
def vllm() -> RunReport:
    return RunReport(VLLM)


def test_the_ranking_puts_the_fastest_deployment_first_by_the_figure_the_params_name(vllm: RunReport) -> None:
    table = tables.ranking(vllm.summary, vllm.samples, "output_tok_s", vllm.params)
    assert list(table["deployment"]) == ["tinyllama", "qwen2.5-3b", "yi-6b"]
    assert list(table["rank"]) == [1, 2, 3]
    assert table.loc[0, "best output (tok/s)"] == pytest.approx(2793.0, abs=0.5)
    assert list(table["at load"]) == ["c\u00a0=\u00a064", "c\u00a0=\u00a064", "c\u00a0=\u00a016"]
    assert table.loc[0, "peak GPU memory (MiB)"] == pytest.approx(22_164.0)
    by_latency = tables.ranking(vllm.summary, vllm.samples, "ttft_ms", vllm.params)
    column = "median TTFT at lowest load (ms)"
    assert by_latency[column].is_monotonic_increasing and list(by_latency["at load"]) == ["c\u00a0=\u00a01"] * 3


def test_the_ranking_shows_goodput_when_the_summary_has_it(vllm: RunReport) -> None:
    goodput = vllm.summary[vllm.summary["metric"] == "req_s"].assign(metric="goodput_req_s")
    table = tables.ranking(pd.concat([vllm.summary, goodput]), vllm.samples, "output_tok_s", vllm.params)
    assert "best goodput (req/s)" in table and table["best goodput (req/s)"].notna().all()
    assert "best goodput (req/s)" not in tables.ranking(vllm.summary, vllm.samples, "output_tok_s", vllm.params)


def test_numbers_read_as_a_person_writes_them() -> None:
    assert percent(1.0) == "100 %" and percent(0.0375) == "3.8 %"
    assert signed_percent(-1.28) == "−1.3 %"
    assert tables.load_text("concurrency", 4.0) == "c\u00a0=\u00a04"  # never wrapped inside a cell
    assert tables.load_text("poisson", 2.5) == "2.5\u00a0req/s"
    page = table_html(pd.DataFrame({"deployment": ["a", "b"], "success": [1.0, 0.5], "TTFT p50 (ms)": [12.3456, 1234.5]}))
    assert "100 %" in page and "50 %" in page and "12.3" in page and "1,234" in page
    assert "row_heading" not in page and ">0<" not in page


def test_a_section_appears_only_where_the_run_has_its_data(vllm: RunReport) -> None:
    sglang = RunReport(SGLANG)  # memory and points only: no requests, no summary, no comparison
    assert sglang.performance() is None and sglang.languages() is None and sglang.agreement() is None
    assert sglang.memory() is not None
    assert vllm.agreement() is not None and vllm.failures() is None and vllm.languages() is None


def test_the_memory_section_says_why_the_planner_is_further_from_the_peak() -> None:
    text = RunReport(SGLANG).memory()._repr_html_()
    assert "the peak is not the idle footprint" in text and "tinyllama-sglang grew by 622 MiB" in text


def test_the_validity_panel_warns_at_seventy_percent_of_the_clients_ceiling(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(VLLM, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["calibration"] = {"max_req_s": 100.0, "max_chunks_s": 2_000.0, "cores": 1}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    summary, samples, points = frames.summary_frame(run_dir), frames.memory_frame(run_dir), frames.points_frame(run_dir)
    (ceiling,) = [c for c in tables.validity(run_dir, summary, samples, points) if c.check == "Client ceiling"]
    assert ceiling.status == "warning" and "above 70% of the client's calibrated ceiling" in ceiling.finding
    manifest["calibration"] = {"max_req_s": 1e6, "max_chunks_s": 1e8, "cores": 4}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (ceiling,) = [c for c in tables.validity(run_dir, summary, samples, points) if c.check == "Client ceiling"]
    assert ceiling.status == "ok" and "100,000,000 chunks/s" in ceiling.finding


def test_the_validity_panel_names_late_points_and_says_what_to_do(vllm: RunReport) -> None:
    checks = {c.check: c for c in tables.validity(vllm.run_dir, vllm.summary, vllm.samples, vllm.points)}
    assert set(checks) >= {"Client ceiling", "Schedule lag", "Error rate", "Memory source"}
    assert checks["Client ceiling"].status == "unknown" and "servelab calibrate" in checks["Client ceiling"].action
    assert checks["Schedule lag"].status == "warning" and "5 of 36" in checks["Schedule lag"].finding
    assert checks["Error rate"].status == "ok" and checks["Memory source"].finding.startswith("NVML")
    assert all(c.action for c in checks.values())


def _notebook_with(tmp_path: Path, output: dict) -> Path:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.from_dict(output)]
    notebook.cells = [nbformat.v4.new_markdown_cell("# title"), cell]
    path = tmp_path / "04_report.ipynb"
    nbformat.write(notebook, path)
    return path


def test_the_export_refuses_a_figure_that_did_not_render_or_has_no_alt_text(tmp_path: Path) -> None:
    unrendered = {"output_type": "execute_result", "execution_count": 1, "metadata": {},
                  "data": {"text/plain": "<Figure size 640x480 with 1 Axes>"}}
    with pytest.raises(OutputsError, match="did not render"):
        report_blocks(_notebook_with(tmp_path, unrendered))
    bare = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo="}}
    with pytest.raises(OutputsError, match="without alt text"):
        report_blocks(_notebook_with(tmp_path, bare))
    with pytest.raises(OutputsError, match="without an image or alt text"):
        check_figures('<figure class="servelab-chart"><img src="data:image/png;base64," alt="x"></figure>', tmp_path)


def test_the_validity_panel_shows_engine_drift_where_the_run_measured_turns(tmp_path: Path) -> None:
    """The recorded H200 comparison turns (servelab and vllm bench taking turns on one server): the same client's
    output tok/s moved between turns at one load, which the panel states as the engine's own drift."""
    run_dir = tmp_path / "run"
    shutil.copytree(VLLM, run_dir)
    assert "Engine drift" not in {c.check for c in tables.validity(run_dir, *_frames(run_dir))}
    shutil.copy(RECORDED / "h200-agreement-turns.csv", run_dir / "agreement_turns.csv")
    (drift,) = [c for c in tables.validity(run_dir, *_frames(run_dir)) if c.check == "Engine drift"]
    turns = pd.read_csv(run_dir / "agreement_turns.csv")
    spread = turns.groupby(["deployment", "concurrency", "client"])["output_tok_s"].agg(lambda v: v.max() / v.min() - 1)
    assert drift.status == "warning" and f"up to {spread.max():.0%}" in drift.finding
    assert "Repeat points" in drift.action


def _frames(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return frames.summary_frame(run_dir), frames.memory_frame(run_dir), frames.points_frame(run_dir)


def test_the_report_page_and_the_charts_agree_on_the_class_the_export_counts() -> None:
    from servelab.analyse import plots
    from servelab.report import html

    assert html.CHART_CLASS == plots.CHART_CLASS


def test_the_load_points_table_of_a_run_with_one_load_point_has_its_one_row() -> None:
    """A run of one point has one summary row per metric, which pandas' .loc returned as a Series, not a table."""
    one = pd.DataFrame([
        {"point_id": "a/en/concurrency-1", "deployment": "a", "language": "en", "load_kind": "concurrency",
         "load_value": 1.0, "metric": metric, "stat": stat, "value": value, "unit": ""}
        for metric, stat, value in (("output_tok_s", "value", 5.0), ("ttft_ms", "p50", 20.0), ("success_rate", "value", 1.0))
    ])
    table = tables.load_points(one)
    assert table.to_dict("records") == [
        {"deployment": "a", "language": "en", "load": "c\u00a0=\u00a01", "output (tok/s)": 5.0, "TTFT p50 (ms)": 20.0, "success": 1.0}
    ]


def test_throughput_per_group_sums_each_groups_deployments_at_the_points_where_all_were_loaded(vllm: RunReport) -> None:
    assert tables.group_throughput(vllm.summary, vllm.params).empty, "no groups named: no table"
    data = vllm.params.model_dump(mode="json")
    for deployment in data["deployments"]:
        deployment["group"] = "small" if deployment["name"] in ("tinyllama", "qwen2.5-3b") else "large"
    grouped = parse_params(data, "grouped")
    table = tables.group_throughput(vllm.summary, grouped)
    together = vllm.summary[vllm.summary["interference"].fillna(False).astype(bool)]
    output = together[(together["metric"] == "output_tok_s") & (together["stat"] == "value")]
    assert set(table["group"]) == {"small", "large"}
    assert len(table) == 2 * output.groupby(["language", "load_value"]).ngroups
    first = output.iloc[0]
    at = output[(output["language"] == first["language"]) & (output["load_value"] == first["load_value"])]
    small = table[(table["group"] == "small") & (table["language"] == first["language"])
                  & (table["load"] == tables.load_text(first["load_kind"], first["load_value"]))]
    assert small["deployments"].item() == 2
    assert small["output tok/s"].item() == pytest.approx(at[at["deployment"].isin(["tinyllama", "qwen2.5-3b"])]["value"].sum())
