"""Interop: a run exported as `vllm bench serve` results and read back equals servelab's own summary; real-shaped
vLLM and GuideLLM files are read with each tool's definitions; unknown files are refused by name."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures_records import make_record
from servelab.analyse.metrics import ID_COLUMNS, summarize
from servelab.checks.interop import IMPORTED_COLUMNS, export_vllm_bench, import_results, vllm_bench_result
from servelab.errors import ServelabError
from servelab.records import (
    MANIFEST_FILE,
    POINTS_FILE,
    REQUESTS_FILE,
    PointRecord,
    RequestRecord,
    latest_points,
    read_requests,
    to_dict,
)

DATA = Path(__file__).parents[1] / "data"
RECORDED = DATA / "recorded" / "llamacpp_requests.jsonl"
VLLM_SAMPLE = DATA / "interop" / "vllm_bench_serve_sample.json"
GUIDELLM_SAMPLE = DATA / "interop" / "guidellm_report_sample.json"
MS = 1_000_000
S = 1_000_000_000
# The keys `vllm bench serve --save-result --save-detailed` writes for a generation benchmark with
# `--percentile-metrics ttft,tpot,itl,e2el` (vllm/benchmarks/serve.py, main_async and benchmark).
VLLM_KEYS = {
    "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
    "burstiness", "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
    "total_output_tokens", "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
    "input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times", "generated_texts",
    "errors", "max_output_tokens_per_s", "max_concurrent_requests", "rtfx",
} | {f"{s}_{m}_ms" for s in ("mean", "median", "std", "p99") for m in ("ttft", "tpot", "itl", "e2el")}  # fmt: skip


make = make_record


def constructed_run() -> tuple[list[RequestRecord], dict[str, PointRecord]]:
    """Two points with what vLLM treats specially: multi-token chunks, a 1-token output, a failure, a warm-up."""
    closed = "dep/en/concurrency-2"
    opened = "dep/ko/poisson-4"
    records = [
        make(0, point=closed, warmup=True, sent_ms=0, chunks_ms=(400, 900), end_ms=950, tokens=50),
        make(1, point=closed, intended_ms=1000, sent_ms=1000.4, chunks_ms=(1030, 1047, 1066, 1090), end_ms=1091),
        make(2, point=closed, intended_ms=1000, sent_ms=1000.6, chunks_ms=(1041, 1062, 1080, 1111, 1140), end_ms=1140.5, tokens=9),
        make(3, point=closed, intended_ms=1091, sent_ms=1091.3, chunks_ms=(1120,), end_ms=1121, tokens=1, prompt=12),
        make(4, point=closed, intended_ms=1121, sent_ms=1121.2, chunks_ms=(1150, 1170), end_ms=1171, error="http_5xx"),
        make(5, point=closed, intended_ms=1140.5, sent_ms=1140.9, chunks_ms=(1170, 1190, 1213, 1236, 1260), end_ms=2600, tokens=5),
        make(0, point=opened, intended_ms=3000, sent_ms=3000.2, chunks_ms=(3040, 3060, 3085), end_ms=3086, tokens=6, prompt=20),
        make(1, point=opened, intended_ms=3250, sent_ms=3253, chunks_ms=(3300, 3330), end_ms=3331, tokens=4, prompt=21),
        make(2, point=opened, intended_ms=3310, sent_ms=3311, chunks_ms=(3350, 3371, 3390, 4420), end_ms=4421, tokens=4, prompt=19),
    ]  # fmt: skip
    points = {
        closed: PointRecord(closed, "dep", "vllm", "smollm2", "en", "concurrency", 2.0, "done", 999 * MS),
        opened: PointRecord(opened, "dep", "vllm", "smollm2", "ko", "poisson", 4.0, "done", 2999 * MS),
    }
    return records, points


def write_run(folder: Path, records: list[RequestRecord], points: dict[str, PointRecord]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REQUESTS_FILE).write_text("".join(json.dumps(to_dict(r)) + "\n" for r in records))
    (folder / POINTS_FILE).write_text("".join(json.dumps(to_dict(p)) + "\n" for p in points.values()))
    manifest = {
        "clock": {"anchor": {"monotonic_ns": 0, "utc": "2025-06-11T14:00:00+00:00"}},
        "params": {
            "sweep": {
                "api": "chat",
                "load": [
                    {"kind": "concurrency", "values": [2]},
                    {"kind": "poisson", "values": [4.0], "burstiness": 1.0, "max_concurrency": 16},
                ],
            }
        },
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def recorded_run() -> tuple[list[RequestRecord], dict[str, PointRecord]]:
    names = {f.name for f in dataclasses.fields(RequestRecord)}
    rows = [json.loads(line) for line in RECORDED.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [RequestRecord(**{k: v for k, v in row.items() if k in names}) for row in rows]
    points = {}
    for point_id in {r.point_id for r in records}:
        first = next(r for r in records if r.point_id == point_id)
        kind, value = point_id.split("/")[2].split("-")
        points[point_id] = PointRecord(
            point_id, first.deployment, first.framework, first.model, first.language, kind, float(value), "done",
            min(r.intended_send_ns for r in records if r.point_id == point_id),
        )  # fmt: skip
    return records, points


def values(frame: pd.DataFrame, point_id: str) -> pd.Series:
    return frame[frame.point_id == point_id].set_index(["metric", "stat"]).value


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("source", ["constructed", "recorded"])
def test_a_run_exported_as_vllm_results_reads_back_as_its_own_summary(tmp_path, source):
    records, points = constructed_run() if source == "constructed" else recorded_run()
    run = write_run(tmp_path / "run", records, points)
    ours = summarize(read_requests(run), latest_points(run))
    files = export_vllm_bench(run, tmp_path / "vllm")
    assert len(files) == len(points)
    checked = set()
    for path in files:
        theirs = import_results(path)
        assert list(theirs.columns) == IMPORTED_COLUMNS
        assert set(theirs.source) == {"vllm-bench"}
        point_id = theirs.point_id.iloc[0]
        expected_ids = ours[ours.point_id == point_id].iloc[0]
        for column in ID_COLUMNS[1:]:  # all but point_id
            assert theirs[column].iloc[0] == expected_ids[column], column
        mine = values(ours, point_id)
        for (metric, stat), value in values(theirs, point_id).items():
            assert value == pytest.approx(mine[metric, stat], rel=1e-9, abs=1e-9), (point_id, metric, stat)
            checked.add((metric, stat))
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "prompt_tokens", "output_tokens"):
        assert {
            (metric, s) for s in ("count", "mean", "std", "min", "p50", "p90", "p99", "p99.9", "max")
        } <= checked
    scalars = ("requests", "errors", "success_rate", "duration_s", "req_s", "output_tok_s", "total_tok_s")
    assert {(m, "value") for m in scalars} <= checked


def test_the_round_trip_would_notice_a_wrong_number(tmp_path):
    records, points = constructed_run()
    run = write_run(tmp_path / "run", records, points)
    ours = summarize(read_requests(run), latest_points(run))
    path = export_vllm_bench(run, tmp_path / "vllm")[0]
    document = json.loads(path.read_text())
    document["p99_ttft_ms"] *= 1.001
    path.write_text(json.dumps(document))
    theirs = values(import_results(path), document["point_id"])
    assert theirs["ttft_ms", "p99"] != pytest.approx(
        values(ours, document["point_id"])["ttft_ms", "p99"], rel=1e-6
    )


# ------------------------------------------------------------------------------------------ export
def test_the_export_has_every_key_vllm_bench_serve_writes_and_per_request_lists_in_send_order(tmp_path):
    records, points = constructed_run()
    run = write_run(tmp_path / "run", records, points)
    paths = export_vllm_bench(run, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["dep_en_concurrency-2.json", "dep_ko_poisson-4.json"]
    closed = json.loads((tmp_path / "out" / "dep_en_concurrency-2.json").read_text())
    assert VLLM_KEYS <= closed.keys()
    assert VLLM_KEYS <= json.loads(VLLM_SAMPLE.read_text()).keys()  # the sample holds the same keys
    assert closed["num_prompts"] == 5  # the warm-up is left out
    assert (closed["completed"], closed["failed"]) == (4, 1)
    assert closed["request_rate"] == "inf" and closed["max_concurrency"] == 2
    assert closed["backend"] == "openai-chat"
    assert closed["date"] == "20250611-140000"  # anchor 14:00:00 at monotonic 0; the point began at 0.999 s
    failed = closed["errors"].index("http_5xx: server closed the stream")
    assert failed == 3 and [e for i, e in enumerate(closed["errors"]) if i != failed] == ["", "", "", ""]
    assert closed["latencies"][failed] == 0.0 and closed["output_lens"][failed] == 0
    # what arrived before the failure stays, as in vLLM
    assert closed["ttfts"][failed] == pytest.approx(0.0288)
    assert closed["output_lens"] == [5, 9, 1, 0, 5]
    assert closed["input_lens"] == [7, 7, 12, 7, 7]
    assert closed["itls"][1] == pytest.approx([0.021, 0.018, 0.031, 0.029])
    assert closed["start_times"][0] == pytest.approx(1.0004)
    assert closed["generated_texts"] == [""] * 5
    # tokens: 5 + 9 + 1 + 5 over (2600 - 1000) ms; TPOT only over requests of more than one token
    assert closed["total_output_tokens"] == 20 and closed["output_throughput"] == pytest.approx(20 / 1.6)
    assert closed["mean_tpot_ms"] == pytest.approx(
        np.mean([(1091 - 1030) / 4, (1140.5 - 1041) / 8, (2600 - 1170) / 4])
    )
    opened = json.loads((tmp_path / "out" / "dep_ko_poisson-4.json").read_text())
    assert (opened["request_rate"], opened["burstiness"], opened["max_concurrency"]) == (4.0, 1.0, 16)
    assert opened["p99.9_itl_ms"] == pytest.approx(np.percentile([20, 25, 30, 21, 19, 1030], 99.9))


def test_queue_times_are_the_wait_from_vllms_arrival_time():
    records, points = constructed_run()
    closed = vllm_bench_result(
        [r for r in records if r.point_id == "dep/en/concurrency-2"], points["dep/en/concurrency-2"]
    )
    # Closed loop: vLLM releases every request at the start (rate inf) and a slot frees it; the start is the
    # first intended send of the point (1000 ms).
    assert closed["queue_times"] == pytest.approx([0.0004, 0.0006, 0.0913, 0.1212, 0.1409])
    opened = vllm_bench_result(
        [r for r in records if r.point_id == "dep/ko/poisson-4"], points["dep/ko/poisson-4"]
    )
    # open loop: from each intended time
    assert opened["queue_times"] == pytest.approx([0.0002, 0.003, 0.001])


def test_peak_output_tokens_and_concurrency_follow_vllms_buckets_and_sweep_line():
    point = PointRecord("p/en/concurrency-2", "p", "vllm", "m", "en", "concurrency", 2.0, "done", 0)
    records = [
        make(0, point="p/en/concurrency-2", sent_ms=0, chunks_ms=(100, 200, 1100), end_ms=1200),
        make(1, point="p/en/concurrency-2", sent_ms=500, chunks_ms=(600, 700, 800, 900), end_ms=1000),
        make(
            2,
            point="p/en/concurrency-2",
            intended_ms=1200,
            sent_ms=1200,
            chunks_ms=(1300,),
            end_ms=1400,
            tokens=1,
        ),
    ]
    result = vllm_bench_result(records, point)
    # chunks in the first whole second after the first send: 100, 200, 600, 700, 800, 900 -> 6
    assert result["max_output_tokens_per_s"] == 6.0
    # [0, 1.2) and [0.5, 1.0) overlap; [1.2, 1.4) starts as the first ends (half-open): peak 2
    assert result["max_concurrent_requests"] == 2


def test_exporting_a_folder_without_requests_names_it(tmp_path):
    with pytest.raises(ServelabError, match=str(tmp_path / REQUESTS_FILE)):
        export_vllm_bench(tmp_path, tmp_path / "out")


# ------------------------------------------------------------------------------------------ vLLM import
def test_a_real_shaped_vllm_result_reads_with_its_own_numbers_and_the_lists_fill_in_the_rest():
    document = json.loads(VLLM_SAMPLE.read_text())
    frame = import_results(VLLM_SAMPLE)
    ids = frame.iloc[0]
    # from --metadata
    assert (ids.deployment, ids.framework, ids.language) == ("smollm2-vllm", "vllm", "en")
    assert (ids.model, ids.load_kind, ids.load_value) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "concurrency",
        4.0,
    )
    assert ids.point_id == "smollm2-vllm/en/concurrency-4"
    got = values(frame, ids.point_id)
    for name, metric in (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("itl", "itl_ms"), ("e2el", "e2e_ms")):
        assert got[metric, "mean"] == document[f"mean_{name}_ms"]
        assert got[metric, "p50"] == document[f"median_{name}_ms"]
        assert got[metric, "std"] == document[f"std_{name}_ms"]
        assert got[metric, "p90"] == document[f"p90_{name}_ms"]
        assert got[metric, "p99"] == document[f"p99_{name}_ms"]
    ok = [not e for e in document["errors"]]
    ttfts = [t * 1000 for t, good in zip(document["ttfts"], ok, strict=True) if good]
    itls = [g * 1000 for gaps, good in zip(document["itls"], ok, strict=True) if good for g in gaps]
    assert got["ttft_ms", "count"] == 7 and got["ttft_ms", "min"] == pytest.approx(min(ttfts))
    assert got["ttft_ms", "p95"] == pytest.approx(np.percentile(ttfts, 95))
    assert got["itl_ms", "count"] == 7 * 15 and got["itl_ms", "max"] == pytest.approx(max(itls))
    assert got["output_tokens", "mean"] == 16 and got["prompt_tokens", "count"] == 7
    assert got["requests", "value"] == 8 and got["errors", "value"] == 1
    assert got["success_rate", "value"] == 7 / 8
    assert got["req_s", "value"] == document["request_throughput"]
    assert got["output_tok_s", "value"] == document["output_throughput"]
    assert got["total_tok_s", "value"] == document["total_token_throughput"]
    assert got["duration_s", "value"] == document["duration"]
    assert ("goodput_req_s", "value") not in got.index  # request_goodput is null without --goodput


def test_a_vllm_result_without_the_detailed_lists_gives_the_stats_it_states(tmp_path):
    document = json.loads(VLLM_SAMPLE.read_text())
    for key in (
        "input_lens",
        "output_lens",
        "start_times",
        "ttfts",
        "itls",
        "generated_texts",
        "errors",
        "latencies",
    ):
        del document[key]
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(document))
    got = values(import_results(path), "smollm2-vllm/en/concurrency-4")
    assert sorted(got["ttft_ms"].index) == ["count", "mean", "p50", "p90", "p99", "std"]
    # the number of gaps is unknown
    assert sorted(got["itl_ms"].index) == ["mean", "p50", "p90", "p99", "std"]
    assert "output_tokens" not in got.index.get_level_values(0)


def test_appended_vllm_results_are_one_point_each(tmp_path):
    document = json.loads(VLLM_SAMPLE.read_text())
    second = {**document, "max_concurrency": 8, "request_throughput": 9.0}
    path = tmp_path / "appended.json"
    path.write_text(json.dumps(document) + "\n" + json.dumps(second) + "\n" + json.dumps(second))
    frame = import_results(path)
    assert list(frame.point_id.unique()) == [
        "smollm2-vllm/en/concurrency-4",
        "smollm2-vllm/en/concurrency-8",
        "smollm2-vllm/en/concurrency-8#2",
    ]
    assert values(frame, "smollm2-vllm/en/concurrency-8")["req_s", "value"] == 9.0


@pytest.mark.parametrize(
    ("traffic", "load"),
    [
        ({"request_rate": 3.5, "burstiness": 1.0}, ("poisson", 3.5)),
        ({"request_rate": 3.5, "burstiness": "inf"}, ("constant", 3.5)),
        ({"request_rate": 2.0, "burstiness": 0.5}, ("gamma", 2.0)),
        ({"request_rate": "inf", "max_concurrency": None}, ("concurrency", 8.0)),  # all 8 prompts at once
        ({"load_kind": "constant", "load_value": "4"}, ("constant", 4.0)),  # --metadata wins
    ],
)
def test_vllm_traffic_settings_become_servelab_load_points(tmp_path, traffic, load):
    document = {**json.loads(VLLM_SAMPLE.read_text()), **traffic}
    path = tmp_path / "traffic.json"
    path.write_text(json.dumps(document))
    frame = import_results(path)
    assert (frame.load_kind.iloc[0], frame.load_value.iloc[0]) == load


def test_identity_given_to_the_import_overrides_the_file(tmp_path):
    document = json.loads(VLLM_SAMPLE.read_text())
    for key in ("deployment", "framework", "language"):
        del document[key]
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(document))
    bare = import_results(path)
    assert (bare.deployment.iloc[0], bare.framework.iloc[0], bare.language.iloc[0]) == ("bare", None, None)
    assert bare.point_id.iloc[0] == "bare/concurrency-4"
    named = import_results(path, deployment="qwen", framework="vllm", model="qwen-0.5b", language="ko")
    assert named.iloc[0][["deployment", "framework", "model", "language"]].tolist() == [
        "qwen",
        "vllm",
        "qwen-0.5b",
        "ko",
    ]
    assert named.point_id.iloc[0] == "qwen/ko/concurrency-4"


# ------------------------------------------------------------------------------------------ GuideLLM import
def test_a_guidellm_report_reads_one_point_per_benchmark_with_guidellms_definitions():
    report = json.loads(GUIDELLM_SAMPLE.read_text())
    frame = import_results(GUIDELLM_SAMPLE)
    assert set(frame.source) == {"guidellm"}
    assert list(frame.point_id.unique()) == [
        "guidellm_report_sample/concurrency-1",
        "guidellm_report_sample/concurrency-2",
    ]
    assert set(frame.model) == {"HuggingFaceTB/SmolLM2-135M-Instruct"}
    for benchmark, point_id in zip(report["benchmarks"], frame.point_id.unique(), strict=True):
        metrics = benchmark["metrics"]
        got = values(frame, point_id)
        ttft = metrics["time_to_first_token_ms"]["successful"]
        assert got["ttft_ms", "mean"] == ttft["mean"] and got["ttft_ms", "std"] == ttft["std_dev"]
        assert (
            got["ttft_ms", "p99.9"] == ttft["percentiles"]["p999"]
            and got["ttft_ms", "count"] == ttft["count"]
        )
        latency = metrics["request_latency"]["successful"]  # seconds in GuideLLM
        assert got["e2e_ms", "p90"] == pytest.approx(latency["percentiles"]["p90"] * 1000)
        # GuideLLM's inter-token latency is TPOT ((last - first) / (tokens - 1)), weighted by tokens: no request count
        itl = metrics["inter_token_latency_ms"]["successful"]
        assert got["tpot_ms", "mean"] == itl["mean"] and ("tpot_ms", "count") not in got.index
        assert "itl_ms" not in got.index.get_level_values(0)
        totals = metrics["request_totals"]
        assert got["requests", "value"] == totals["successful"] + totals["errored"]
        assert got["errors", "value"] == totals["errored"]
        assert got["duration_s", "value"] == benchmark["duration"]
        # The time-weighted mean of GuideLLM's request rate is successful requests over the measured window.
        assert got["req_s", "value"] == pytest.approx(totals["successful"] / benchmark["duration"], rel=1e-9)
        assert got["output_tok_s", "value"] == metrics["output_tokens_per_second"]["successful"]["mean"]
    assert values(frame, "guidellm_report_sample/concurrency-2")["success_rate", "value"] == 7 / 8


@pytest.mark.parametrize(
    ("strategy", "load"),
    [
        ({"type_": "synchronous"}, ("concurrency", 1.0)),
        ({"type_": "poisson", "rate": 3.0, "random_seed": 42}, ("poisson", 3.0)),
        ({"type_": "constant", "rate": 5.0}, ("constant", 5.0)),
        ({"type_": "throughput", "max_concurrency": 64}, ("throughput", 64.0)),
    ],
)
def test_guidellm_strategies_become_servelab_load_points(tmp_path, strategy, load):
    report = json.loads(GUIDELLM_SAMPLE.read_text())
    report["benchmarks"] = report["benchmarks"][:1]
    report["benchmarks"][0]["config"]["strategy"] = strategy
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    frame = import_results(path)
    assert (frame.load_kind.iloc[0], frame.load_value.iloc[0]) == load


def test_a_guidellm_yaml_report_reads_like_its_json(tmp_path):
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(json.loads(GUIDELLM_SAMPLE.read_text())))
    from_yaml = import_results(path, deployment="guidellm_report_sample")
    pd.testing.assert_frame_equal(from_yaml, import_results(GUIDELLM_SAMPLE))


# ------------------------------------------------------------------------------------------ errors
def test_an_unknown_format_is_refused_with_the_file_name_and_what_is_expected(tmp_path):
    path = tmp_path / "aiperf.json"
    path.write_text(json.dumps({"records": [], "input_config": {}}))
    with pytest.raises(
        ServelabError, match=r"aiperf\.json: unknown results format.*input_config.*vllm bench serve.*GuideLLM"
    ):
        import_results(path)


def test_a_file_that_is_not_json_or_is_missing_is_named(tmp_path):
    path = tmp_path / "report.html"
    path.write_text("<html>guidellm report</html>")
    with pytest.raises(ServelabError, match=r"report\.html: not JSON"):
        import_results(path)
    with pytest.raises(ServelabError, match=r"missing\.json: no such file"):
        import_results(tmp_path / "missing.json")


def test_a_failed_vllm_point_keeps_counts_but_no_meaningless_zero_latencies(tmp_path):
    document = json.loads(VLLM_SAMPLE.read_text())
    document |= {"completed": 0, "failed": 8, "errors": ["boom"] * 8, "request_throughput": 0.0}
    path = tmp_path / "failed.json"
    path.write_text(json.dumps(document))
    got = values(import_results(path), "smollm2-vllm/en/concurrency-4")
    assert got["ttft_ms"].to_dict() == {"count": 0.0}
    assert got["success_rate", "value"] == 0.0 and not math.isnan(got["requests", "value"])
