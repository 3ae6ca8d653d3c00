"""The server's own decode rate (Ollama's eval_count / eval_duration) in summary.csv, beside the client's figures.

The Ollama stream comes from tools/faultproxy in Ollama flavour, without a fault, in front of the real
llama-server: the proxy translates the engine's SSE into Ollama's NDJSON, and its decode time (timings.predicted_ms)
into eval_duration, so the numbers are the real engine's.
"""

from __future__ import annotations

import pandas as pd
import pytest
from fault_harness import faultproxy, fleet_at, sweep_params
from servelab.analyse.summary import write_summary
from servelab.measure.sweep import run_sweep
from servelab.records import SUMMARY_FILE, read_requests

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_ollama_eval_rate_is_in_summary_csv_beside_the_clients_figures(tmp_path, embedded_server):
    """Expectation: after a real sweep of an Ollama-flavoured stream, summary.csv has a server_eval_tok_s row per
    distribution stat (unit tok/s), computed from every completed request's eval_count / eval_duration (its
    median equals the median of those per-request rates), and the client's own output_tok_s and tpot_ms are
    still there: the server's figure is added, never used instead."""
    params = sweep_params(name="ollama", requests_per_point=4, warmup_requests=1, output_tokens=8, request_timeout_s=60)
    with faultproxy(embedded_server.base_url, "none", flavour="ollama") as (url, process):
        run_sweep(params, tmp_path, fleet_at(tmp_path, url, process.pid, name="ollama", flavour="ollama"), progress=False)
    write_summary(tmp_path)
    records = [r for r in read_requests(tmp_path) if not r.warmup]
    rates = [r.server_timings["eval_count"] / (r.server_timings["eval_duration"] / 1e9) for r in records]  # type: ignore[index]
    assert len(rates) == 4 and all(rate > 0 for rate in rates)
    summary = pd.read_csv(tmp_path / SUMMARY_FILE)
    eval_rows = summary[summary["metric"] == "server_eval_tok_s"].set_index("stat")
    assert set(eval_rows["unit"]) == {"tok/s"}
    assert eval_rows.loc["count", "value"] == 4
    assert eval_rows.loc["p50", "value"] == pytest.approx(pd.Series(rates).median())
    assert {"output_tok_s", "tpot_ms", "ttft_ms"} <= set(summary["metric"])


def test_a_server_that_reports_no_eval_rate_gets_no_empty_rows(tmp_path, embedded_server):
    """Expectation: the same sweep straight against llama-server (OpenAI flavour, no eval_duration) has no
    server_eval_tok_s rows at all, rather than rows of NaN."""
    params = sweep_params(name="openai", requests_per_point=2, warmup_requests=0, output_tokens=4, request_timeout_s=60)
    run_sweep(params, tmp_path, fleet_at(tmp_path, embedded_server.base_url, embedded_server.pid, name="openai"), progress=False)
    write_summary(tmp_path)
    summary = pd.read_csv(tmp_path / SUMMARY_FILE)
    assert "server_eval_tok_s" not in set(summary["metric"]) and "output_tok_s" in set(summary["metric"])
