"""The notebooks: committed clean, parameterised, thin, and executed for real through papermill."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
from servelab import lab
from servelab.manifest import read_params
from servelab.records import read_jsonl
from servelab.run import NOTEBOOKS, kernel_name

REPO = Path(__file__).resolve().parents[2]
ALL_NOTEBOOKS = sorted(path.stem for path in (REPO / "notebooks").glob("*.ipynb"))
LAB_NOTEBOOKS = ("00_start_here", "01_deploy", "02_sweep", "03_gpu_memory", "04_report")
"""The notebooks a researcher runs by hand; they import servelab through one surface, `servelab.lab`."""


def test_the_landing_notebook_and_the_batch_notebooks_are_all_there():
    assert ALL_NOTEBOOKS == ["00_start_here", *NOTEBOOKS]


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_is_committed_without_outputs_and_has_one_tagged_parameters_cell(name):
    book = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code)
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith("# ")


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebooks_define_no_functions_beyond_a_line_or_two(name):
    book = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert "def " not in cell.source and "class " not in cell.source and "lambda" not in cell.source


@pytest.mark.parametrize("name", LAB_NOTEBOOKS)
def test_the_lab_notebooks_import_servelab_through_one_surface(name):
    book = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    imports = [
        line.strip()
        for cell in book.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
        if re.match(r"\s*(import|from)\s", line)
    ]
    assert imports == ["import servelab.lab as lab"]


def test_batch_run_executes_all_four_notebooks_and_writes_the_results_layout(batch_run):
    run_dir = batch_run.run_dir
    for name in ("manifest.json", "requests.jsonl", "points.jsonl", "summary.csv", "report.html", "host_memory.csv"):
        assert (run_dir / name).stat().st_size > 0, name
    for name in NOTEBOOKS:
        executed = nbformat.read(run_dir / "notebooks" / f"{name}.ipynb", as_version=4)
        assert executed.metadata["papermill"]["exception"] is False or executed.metadata["papermill"].get("exception") is None
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["gpu"] == "none"
    assert manifest["engines"]["smollm2"]["framework"] == "llamacpp"
    assert manifest["git"]["sha"]
    requests = list(read_jsonl(run_dir / "requests.jsonl"))
    measured = [r for r in requests if not r["warmup"]]
    assert len(measured) == 2 * 2 * 4
    assert all(r["error_class"] is None for r in requests)
    summary = pd.read_csv(run_dir / "summary.csv")
    assert {"point_id", "metric", "stat", "value"} <= set(summary.columns)
    assert (run_dir.parent / "index.html").read_text().count(run_dir.name) >= 1


def test_a_sweep_sizes_prompts_in_the_servers_own_tokens(batch_run):
    """The sweep cuts prompts with llama-server's /tokenize: by the server's count each is the 32-token target
    plus at most its BOS, Korean too. Sized by the characters estimate, SmolLM2's Korean prompts were 3x long."""
    requests = [r for r in read_jsonl(batch_run.run_dir / "requests.jsonl")]
    by_language = {language: [r["prompt_tokens"] for r in requests if r["language"] == language] for language in ("en", "ko")}
    for language, counts in by_language.items():
        assert counts and all(30 <= n <= 33 for n in counts), (language, counts)


def test_host_memory_fallback_is_labelled_host_rss_and_attributed_to_the_engine(batch_run):
    samples = pd.read_csv(batch_run.run_dir / "host_memory.csv")
    assert set(samples["source"]) == {"host_rss"}
    engine_rows = samples[(samples["scope"] == "process") & (samples["deployment"] == "smollm2")]
    assert len(engine_rows) > 10
    assert engine_rows["used_mib"].max() > 50
    assert not (batch_run.run_dir / "gpu.csv").exists()


def test_report_says_memory_is_host_rss_not_gpu_on_the_cpu_machine(batch_run):
    html = batch_run.report.read_text()
    assert "host RSS" in html
    assert "def " not in html


NEEDS_A_RUN = {"03_gpu_memory": "01_deploy", "04_report": "02_sweep"}
"""Notebooks that start nothing analyse a run some other notebook made."""


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_runs_alone_with_its_default_parameters(name, tmp_path):
    # A copy of notebooks/ and params/ side by side, so the defaults' relative paths hold and outputs stay in tmp.
    from fixtures_run import copy_notebooks_with_one_point_demo

    copy_notebooks_with_one_point_demo(tmp_path)
    try:
        for notebook in (NEEDS_A_RUN.get(name), name):
            if notebook is not None:
                papermill.execute_notebook(
                    str(tmp_path / "notebooks" / f"{notebook}.ipynb"), str(tmp_path / f"{notebook}.out.ipynb"),
                    kernel_name=kernel_name(), cwd=str(tmp_path / "notebooks"), progress_bar=False,
                )
    finally:
        lab.close(str(tmp_path / "params" / "demo.yaml"), str(tmp_path / "outputs"))
    runs = [p for p in (tmp_path / "outputs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs


def test_a_batch_run_reads_its_params_once_and_the_notebooks_use_the_run_folders_copy(tmp_path, monkeypatch):
    """Once the run folder is made, the params file is spoiled: every notebook still runs, on the params the run
    resolved (kept in its manifest), so none of them read the YAML again."""
    import servelab.run as batch
    from fixtures_run import write_params

    params_path = write_params(tmp_path)
    original = batch.create_run

    def create_then_spoil(*args, **kwargs):
        run_dir = original(*args, **kwargs)
        params_path.write_text("name: [this is not the params the run began with\n")
        return run_dir

    monkeypatch.setattr(batch, "create_run", create_then_spoil)
    result = batch.run(params_path, outputs_dir=tmp_path / "outputs")
    measured = [r for r in read_jsonl(result.run_dir / "requests.jsonl") if not r["warmup"]]
    assert len(measured) == 2 * 2 * 4
    assert read_params(result.run_dir).name == "tiny"
    assert result.report.stat().st_size > 0


def test_servelab_report_analyses_a_recorded_run_again_without_starting_anything(batch_run, tmp_path, capsys):
    """A run brought back from another machine: `servelab report RUN` executes 03 (analysis only) and 04 on its
    records and exports the HTML; no engine is started, so the engine's log does not grow."""
    from servelab.cli import main

    outputs = tmp_path / "outputs"
    copy = outputs / batch_run.run_dir.name
    shutil.copytree(batch_run.run_dir, copy)
    (copy / "report.html").unlink()
    logs = {path.name: path.stat().st_size for path in (copy / "logs").iterdir()}
    requests_before = (copy / "requests.jsonl").read_bytes()
    assert main(["report", str(copy), "--outputs", str(outputs)]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    assert (copy / "report.html").stat().st_size > 0 and (outputs / "index.html").exists()
    memory = nbformat.read(copy / "notebooks" / "03_gpu_memory.ipynb", as_version=4)
    injected = [c for c in memory.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "analyse_only = True" in injected[0].source
    assert {path.name: path.stat().st_size for path in (copy / "logs").iterdir()} == logs
    assert (copy / "requests.jsonl").read_bytes() == requests_before
    assert not (copy / "deployments.json").exists()


def test_servelab_report_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path, capsys):
    from servelab.cli import main

    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("servelab: ") and "not a run folder" in error and "Traceback" not in error
