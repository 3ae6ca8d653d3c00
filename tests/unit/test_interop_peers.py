"""Interop with SGLang bench_serving, AIPerf and llmperf (import) and GuideLLM (export), on files in each tool's
format (tests/data/interop/README.md says where each format comes from; the samples are hand-built, not recorded)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from servelab.analyse.metrics import summarize
from servelab.checks.interop import export_guidellm, guidellm_report, import_results
from servelab.cli import main
from servelab.records import latest_points, read_requests
from test_interop import GUIDELLM_SAMPLE, constructed_run, recorded_run, values, write_run

DATA = Path(__file__).parents[1] / "data" / "interop"
SGLANG_SAMPLE = DATA / "sglang_bench_serving_sample.jsonl"
AIPERF_SAMPLE = DATA / "aiperf_profile_export_sample.json"
LLMPERF_SAMPLE = DATA / "llmperf_summary_sample.json"


# ------------------------------------------------------------------------------------------ SGLang
def test_sglang_jsonl_is_read_as_sglang_with_e2e_total_throughput_and_its_concurrency():
    lines = [json.loads(line) for line in SGLANG_SAMPLE.read_text().splitlines()]
    frame = import_results(SGLANG_SAMPLE)
    assert set(frame.source) == {"sglang-bench-serving"}
    closed_id, opened_id = "sglang_bench_serving_sample/concurrency-4", "sglang_bench_serving_sample/poisson-4"
    assert list(frame.point_id.unique()) == [closed_id, opened_id]  # max_concurrency 4 at rate inf is a closed loop

    closed, document = values(frame, closed_id), lines[0]
    assert closed["e2e_ms", "mean"] == document["mean_e2e_latency_ms"]
    assert closed["e2e_ms", "p99"] == document["p99_e2e_latency_ms"]
    assert closed["e2e_ms", "count"] == 7
    assert closed["total_tok_s", "value"] == pytest.approx(document["input_throughput"] + document["output_throughput"])
    assert closed["itl_ms", "p95"] == document["p95_itl_ms"]
    assert closed["requests", "value"] == 8 and closed["errors", "value"] == 1
    ok = [not e for e in document["errors"]]
    ttfts = [t * 1000 for t, good in zip(document["ttfts"], ok, strict=True) if good]
    assert closed["ttft_ms", "count"] == 7 and closed["ttft_ms", "min"] == pytest.approx(min(ttfts))
    assert closed["tpot_ms", "mean"] == document["mean_tpot_ms"]

    opened, document = values(frame, opened_id), lines[1]
    assert opened["e2e_ms", "mean"] == document["mean_e2e_latency_ms"]
    assert opened["requests", "value"] == document["completed"]  # no --output-details: failures unknown
    assert opened["total_tok_s", "value"] == pytest.approx(document["input_throughput"] + document["output_throughput"])


# ------------------------------------------------------------------------------------------ AIPerf
def test_aiperf_profile_export_is_read_with_its_units_and_its_request_counts():
    document = json.loads(AIPERF_SAMPLE.read_text())
    frame = import_results(AIPERF_SAMPLE)
    assert set(frame.source) == {"aiperf"} and set(frame.model) == {document["input_config"]["endpoint"]["model_names"][0]}
    got = values(frame, "aiperf_profile_export_sample/concurrency-4")
    for tag, metric in (("time_to_first_token", "ttft_ms"), ("inter_token_latency", "tpot_ms"),
                        ("inter_chunk_latency", "itl_ms"), ("request_latency", "e2e_ms")):  # fmt: skip
        assert got[metric, "mean"] == document[tag]["avg"]
        assert got[metric, "p25"] == document[tag]["p25"] and got[metric, "p99"] == document[tag]["p99"]
        assert got[metric, "std"] == document[tag]["std"] and got[metric, "max"] == document[tag]["max"]
    assert got["output_tokens", "p50"] == document["output_sequence_length"]["p50"]
    assert got["req_s", "value"] == document["request_throughput"]["avg"]
    assert got["output_tok_s", "value"] == document["output_token_throughput"]["avg"]
    assert got["total_tok_s", "value"] == document["total_token_throughput"]["avg"]
    assert got["duration_s", "value"] == document["benchmark_duration"]["avg"]
    assert got["requests", "value"] == 8 and got["errors", "value"] == 1
    assert ("goodput_req_s", "value") not in got.index  # goodput is null without --goodput


def test_aiperf_latencies_in_seconds_and_a_rate_run_are_converted(tmp_path):
    document = json.loads(AIPERF_SAMPLE.read_text())
    document["request_latency"] = {k: v / 1000 if k != "unit" else "sec" for k, v in document["request_latency"].items()}
    document["goodput"] = {"unit": "requests/sec", "avg": 3.5}
    document["input_config"]["loadgen"] = {"request_rate": 6.0, "request_rate_mode": "constant"}
    path = tmp_path / "profile_export_aiperf.json"
    path.write_text(json.dumps(document))
    got = values(import_results(path), "profile_export_aiperf/constant-6")
    assert got["e2e_ms", "mean"] == pytest.approx(json.loads(AIPERF_SAMPLE.read_text())["request_latency"]["avg"])
    assert got["goodput_req_s", "value"] == 3.5


# ------------------------------------------------------------------------------------------ llmperf
def test_llmperf_summary_is_read_with_seconds_as_ms_and_string_integers_as_numbers():
    document = json.loads(LLMPERF_SAMPLE.read_text())
    frame = import_results(LLMPERF_SAMPLE)
    assert set(frame.source) == {"llmperf"} and set(frame.model) == {document["model"]}
    got = values(frame, "llmperf_summary_sample/concurrency-2")
    assert got["ttft_ms", "mean"] == pytest.approx(document["results_ttft_s_mean"] * 1000)
    assert got["ttft_ms", "p25"] == pytest.approx(document["results_ttft_s_quantiles_p25"] * 1000)
    assert got["e2e_ms", "p99"] == pytest.approx(document["results_end_to_end_latency_s_quantiles_p99"] * 1000)
    assert got["e2e_ms", "std"] == pytest.approx(document["results_end_to_end_latency_s_stddev"] * 1000)
    assert isinstance(document["results_number_input_tokens_min"], str)
    assert got["prompt_tokens", "min"] == 64 and got["output_tokens", "max"] == 16
    assert got["llmperf_inter_token_latency_ms", "mean"] == pytest.approx(document["results_inter_token_latency_s_mean"] * 1000)
    assert "tpot_ms" not in got.index.get_level_values(0)  # llmperf's inter-token latency is not servelab's TPOT
    assert got["requests", "value"] == 8 and got["errors", "value"] == 1 and got["success_rate", "value"] == 7 / 8
    assert got["req_s", "value"] == pytest.approx(document["results_num_completed_requests_per_min"] / 60)
    assert got["output_tok_s", "value"] == document["results_mean_output_throughput_token_per_s"]
    assert got["ttft_ms", "count"] == 7


# ------------------------------------------------------------------------------------------ GuideLLM export
def _summary_keys(report: dict) -> set[str]:
    return set(report["benchmarks"][0]["metrics"]["time_to_first_token_ms"]["successful"])


@pytest.mark.parametrize("source", ["constructed", "recorded"])
def test_a_run_exported_as_a_guidellm_report_reads_back_as_its_own_summary(tmp_path, source):
    records, points = constructed_run() if source == "constructed" else recorded_run()
    run = write_run(tmp_path / "run", records, points)
    ours = summarize(read_requests(run), latest_points(run))
    path = export_guidellm(run, tmp_path / "guidellm.json")
    report = json.loads(path.read_text())
    sample = json.loads(GUIDELLM_SAMPLE.read_text())
    assert set(report) == set(sample)  # metadata, args, benchmarks
    assert _summary_keys(report) == _summary_keys(sample)  # GuideLLM's DistributionSummary fields
    assert len(report["benchmarks"]) == len(points)
    theirs = import_results(path)
    assert set(theirs.source) == {"guidellm"}
    strategies = [b["config"]["strategy"] for b in report["benchmarks"]]
    exported = sorted((s["type_"], s.get("streams", s.get("rate"))) for s in strategies)
    kinds = {"concurrency": "concurrent"}
    assert exported == sorted((kinds.get(p.load_kind, p.load_kind), p.load_value) for p in points.values())
    for point_id, point in points.items():
        mine = values(ours, point_id)
        got = values(theirs, f"guidellm/{point.load_kind}-{point.load_value:g}")
        for metric in ("ttft_ms", "e2e_ms"):
            for stat in ("count", "mean", "min", "max"):
                assert got[metric, stat] == pytest.approx(mine[metric, stat]), (metric, stat)
        assert got["tpot_ms", "min"] == pytest.approx(mine["tpot_ms", "min"])
        for metric in ("req_s", "output_tok_s", "total_tok_s", "requests", "errors", "duration_s"):
            assert got[metric, "value"] == pytest.approx(mine[metric, "value"]), metric


def test_guidellm_itl_is_tpot_weighted_by_output_tokens(tmp_path):
    records, points = constructed_run()
    run = write_run(tmp_path / "run", records, points)
    benchmark = guidellm_report(run)["benchmarks"][0]
    itl = benchmark["metrics"]["inter_token_latency_ms"]["successful"]
    # dep/en/concurrency-2: the successful requests of more than one token, their TPOTs (ms, first token to end
    # over tokens - 1) and those tokens - 1 as weights
    tpots = [(1091 - 1030) / 4, (1140.5 - 1041) / 8, (2600 - 1170) / 4]
    weights = [4, 8, 4]
    assert itl["mean"] == pytest.approx(np.average(tpots, weights=weights))
    assert itl["count"] == 3 and not math.isnan(itl["std_dev"])


def test_the_cli_exports_guidellm_and_imports_the_other_tools(tmp_path, capsys):
    records, points = constructed_run()
    run = write_run(tmp_path / "run", records, points)
    assert main(["export", str(run), "--format", "guidellm"]) == 0
    assert (run / "guidellm-benchmarks.json").is_file()
    out = tmp_path / "imported.csv"
    assert main(["import", str(SGLANG_SAMPLE), str(AIPERF_SAMPLE), str(LLMPERF_SAMPLE), "--out", str(out)]) == 0
    text = out.read_text()
    assert all(f",{source}\n" in text for source in ("sglang-bench-serving", "aiperf", "llmperf"))
