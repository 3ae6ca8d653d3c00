"""The console's progress bar follows the sweep's files as another process writes them: per load point from
points.jsonl, and per request within the running point from requests.jsonl (a torn last line is not counted)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import embedded_params
from servelab.records import POINTS_FILE, REQUESTS_FILE
from servelab.run import PointProgress


def _point(point_id: str, status: str) -> str:
    return json.dumps({"point_id": point_id, "deployment": "smollm2", "framework": "llamacpp", "model": "smollm2",
                       "language": "en", "load_kind": "concurrency", "load_value": 2.0, "status": status, "start_ns": 1}) + "\n"


def _request(point_id: str) -> str:
    return json.dumps({"point_id": point_id, "request_index": 0}) + "\n"


def test_progress_moves_per_point_and_counts_the_requests_of_the_running_point(tmp_path: Path) -> None:
    params = embedded_params(load=[{"kind": "concurrency", "values": [1, 2]}])
    progress = PointProgress(params, tmp_path)
    try:
        assert progress.bar.total == 2 and progress.bar.n == 0
        first, second = "smollm2/en/concurrency-1", "smollm2/en/concurrency-2"
        with open(tmp_path / POINTS_FILE, "a") as points, open(tmp_path / REQUESTS_FILE, "a") as requests:
            points.write(_point(first, "started"))
            requests.write(_request(first) * 3)
            requests.flush(), points.flush()
            progress._refresh()
            assert progress.bar.n == 0 and progress.bar.postfix == f"{first}: 3 requests"
            points.write(_point(first, "done") + _point(second, "started"))
            requests.write(_request(second) * 2 + _request(second)[:20])  # the third is being written
            requests.flush(), points.flush()
            progress._refresh()
            assert progress.bar.n == 1 and progress.bar.postfix == f"{second}: 2 requests"
            requests.write(_request(second)[20:])
            requests.flush()
            progress._refresh()
            assert progress.bar.postfix == f"{second}: 3 requests"
    finally:
        progress.bar.close()


def test_progress_follows_a_relative_run_folder_while_papermill_runs_in_another_directory(tmp_path: Path, monkeypatch) -> None:
    """`servelab run` gives outputs/<run-id>, relative; papermill changes the directory to notebooks/ while a notebook
    runs. The bar must still find the points (it stood at 0/9 through the whole demo sweep)."""
    (tmp_path / "outputs" / "run").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)
    progress = PointProgress(embedded_params(), Path("outputs/run"))
    try:
        monkeypatch.chdir(tmp_path / "notebooks")
        (tmp_path / "outputs" / "run" / POINTS_FILE).write_text(_point("smollm2/en/concurrency-2", "done"))
        progress._refresh()
        assert progress.bar.n == 1
    finally:
        progress.bar.close()
