"""`servelab search` end to end on the real llama-server: it deploys the engine, tries each load, and leaves a run
folder whose summary has goodput per step and whose search.json names the knee. (The knee's position is checked
against the emitter, whose timing is known: tests/emitter/test_search_with_emitter.py.)"""

from __future__ import annotations

import json

import pandas as pd
import yaml
from fixtures_run import TINY
from servelab.checks.search import SEARCH_FILE
from servelab.cli import main
from servelab.records import SUMMARY_FILE


def test_servelab_search_writes_goodput_per_step_and_the_knee(tmp_path, capsys):
    params = {
        **TINY,
        "name": "search",
        "sweep": {**TINY["sweep"], "languages": ["en"], "input_tokens": 8, "output_tokens": 4, "requests_per_point": 3},
        # an SLO every request meets, so the search runs to max_value and the knee is the last step
        "slo": {"ttft_ms": 600_000},
        "search": {"start": 1, "factor": 2, "max_value": 2, "min_gain": -1.0},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["search", str(path), "--outputs", str(tmp_path / "outputs")]) == 0
    printed = capsys.readouterr().out
    run_dir = next((tmp_path / "outputs").glob("*-search"))
    assert str(run_dir) in printed and "goodput_req_s" in printed
    search = json.loads((run_dir / SEARCH_FILE).read_text())["searches"]["smollm2"]
    assert [step["load_value"] for step in search["steps"]] == [1, 2]
    assert search["stop_reason"] == "max_value" and search["knee"] == 2
    summary = pd.read_csv(run_dir / SUMMARY_FILE)
    goodput = summary[summary.metric == "goodput_req_s"]
    assert sorted(goodput.load_value) == [1.0, 2.0] and (goodput.value > 0).all()
    assert (run_dir / "manifest.json").is_file()


def test_servelab_search_without_slos_says_how_to_set_them(tmp_path, capsys):
    path = tmp_path / "noslo.yaml"
    path.write_text(yaml.safe_dump({**TINY, "name": "noslo"}, sort_keys=False))
    assert main(["search", str(path), "--outputs", str(tmp_path / "outputs")]) == 2
    assert "needs SLOs" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
