"""04_report through papermill on a recorded H200 run (tests/data/recorded/README.md): the kernel talks over Unix
sockets, so it prints no 'running over TCP without encryption' warning, and the report's notebook shows sections,
not code, tables or figures of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from servelab.run import execute_notebook

RECORDED = Path(__file__).parents[1] / "data" / "recorded" / "h200-vllm-colocated-run"


def test_the_report_notebook_runs_quietly_and_every_output_is_a_section(tmp_path: Path, capfd) -> None:
    run_dir = tmp_path / "outputs" / "20261201-175639-h100-seed-colocated"
    shutil.copytree(RECORDED, run_dir)
    executed = execute_notebook("04_report", run_dir, Path("params/h100-seed-colocated.yaml"), tmp_path / "outputs")
    err = capfd.readouterr().err
    assert "without encryption" not in err and "IPKernelApp" not in err, err
    outputs = [output for cell in nbformat.read(executed, as_version=4).cells for output in cell.get("outputs", [])]
    html = [output["data"]["text/html"] for output in outputs if "text/html" in output.get("data", {})]
    assert len(html) == 7 and all(block.startswith('<section class="report-section"') for block in html)
    assert not [output for output in outputs if output.get("output_type") == "error"]
