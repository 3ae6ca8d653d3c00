"""benchmarks/client_past_engine.py against the real llama-server, attached as an endpoint whose /metrics are
llama.cpp's: a row per concurrency with servelab's tok/s over the engine's own, and every record of the client
processes merged into the agreement's requests file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from servelab.manifest import read_manifest
from servelab.records import read_jsonl
from servelab.serve.deploy import RunningServer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "client_past_engine.py"


@pytest.mark.engine
@pytest.mark.slow
def test_the_client_past_the_engine_prints_a_ratio_per_concurrency_and_merges_every_record(
    embedded_server: RunningServer, tmp_path: Path
) -> None:
    rows_path = tmp_path / "client_past_engine.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--url", embedded_server.base_url, "--model", embedded_server.served_model,
         "--tokenizer", str(tmp_path), "--concurrency", "2", "4", "--client-processes", "2", "--rounds", "2",
         "--input-tokens", "16", "--output-tokens", "8", "--prompts-per-concurrency", "2", "--min-prompts", "8",
         "--metrics", "llamacpp", "--no-vllm-bench", "--outputs", str(tmp_path / "outputs"), "--json", str(rows_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "lib")}, timeout=600,
    )  # fmt: skip
    assert completed.returncode in (0, 1), completed.stderr[-3000:]
    assert embedded_server.alive(), "a server it did not start is left running"
    result = json.loads(rows_path.read_text())
    rows = result["rows"]
    assert [row["concurrency"] for row in rows] == [2, 4]
    for row in rows:
        assert row["servelab_output_tok_s"] > 0 and row["engine_output_tok_s"] > 0, row
        assert row["servelab_over_engine"] == pytest.approx(row["servelab_output_tok_s"] / row["engine_output_tok_s"], rel=0.01)
        assert row["received_over_server"] == pytest.approx(1.0, abs=0.05), "the engine counted the tokens servelab received"
        assert row["passed"] == (row["servelab_over_engine"] >= 0.99)
        assert row["vllm_bench_output_tok_s"] is None and row["client_processes"] == 2
        verdict = "PASS" if row["passed"] else "FAIL"
        assert f"c={row['concurrency']}: servelab/engine {row['servelab_over_engine']:.4f} -> {verdict}" in completed.stdout
    assert completed.returncode == (0 if all(row["passed"] for row in rows) else 1)

    run_dir = Path(result["run_dir"])
    records = list(read_jsonl(run_dir / "agreement_requests.jsonl"))
    for concurrency in (2, 4):
        for round_index in (0, 1):
            point = [r for r in records if r["point_id"] == f"{embedded_server.served_model}/random/agreement-c{concurrency}-r{round_index}"]
            assert sorted(r["request_index"] for r in point) == list(range(4)), "every request of both processes, once"
            assert all(r["error_class"] is None and r["output_tokens"] == 8 for r in point)
    assert len(records) == 16
    assert not (run_dir / "client-parts").exists(), "the processes' part files are merged and removed"
    engine = read_manifest(run_dir)["engines"]
    (found,) = engine.values()
    server_name = psutil.Process(embedded_server.pid).name()
    assert found["started"] is False and found["memory"] == f"{server_name} (pid {embedded_server.pid}) on port {embedded_server.port}"
