"""Metrics: each formula on hand-made records, the tidy summary, and agreement with `vllm bench serve`'s
definitions (vLLM's `calculate_metrics` re-implemented below) on recorded llama.cpp requests."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_records import make_record
from servelab.analyse.metrics import (
    DISTRIBUTION_STATS,
    SUMMARY_COLUMNS,
    Slo,
    duration_s,
    e2e_from_intended_ms,
    e2e_ms,
    error_breakdown,
    goodput_requests_per_s,
    itl_ms,
    meets_slo,
    output_tokens_per_s,
    requests_per_s,
    schedule_lag_ms,
    success_fraction,
    summarize,
    total_tokens_per_s,
    tpot_ms,
    ttft_from_intended_ms,
    ttft_ms,
    wide,
)
from servelab.records import PointRecord, RequestRecord

RECORDED = Path(__file__).parents[1] / "data" / "recorded" / "llamacpp_requests.jsonl"


make = functools.partial(make_record, point="p", framework="llamacpp", model="m")


# ------------------------------------------------------------------------------------------ per request
def test_latencies_from_the_actual_and_the_intended_send_time():
    record = make(intended_ms=0, sent_ms=1)
    assert ttft_ms(record) == 10.0
    assert ttft_from_intended_ms(record) == 11.0
    assert e2e_ms(record) == 25.0
    assert e2e_from_intended_ms(record) == 26.0
    assert schedule_lag_ms(record) == 1.0


def test_tpot_leaves_the_first_token_out():
    # (E2E - TTFT) / (tokens - 1) = (25 - 10) / 4
    assert tpot_ms(make(tokens=5)) == 3.75
    assert tpot_ms(make(tokens=1)) is None
    assert tpot_ms(make(tokens=None, chunks_ms=(11,))) is None


def test_itl_is_the_gaps_between_chunks_however_many_tokens_they_carry():
    assert itl_ms(make(chunks_ms=(11, 14, 18, 25), tokens=9)) == [3.0, 4.0, 7.0]
    assert itl_ms(make(chunks_ms=(11,))) == []


def test_a_failed_request_has_no_latency():
    failed = make(error="timeout")
    assert ttft_ms(failed) is None and e2e_ms(failed) is None and tpot_ms(failed) is None
    assert itl_ms(failed) == []
    assert schedule_lag_ms(failed) == 1.0
    assert schedule_lag_ms(make(sent_ms=0)) is None


def test_without_a_server_count_the_tokenizer_and_then_the_chunks_count():
    record = make(tokens=None)
    record.tokenizer_output_tokens = 6
    assert tpot_ms(record) == 3.0
    record.tokenizer_output_tokens = None
    assert tpot_ms(record) == 5.0  # 4 chunks


def test_a_request_meets_the_slo_only_when_every_set_limit_holds():
    record = make()  # TTFT 10, TPOT 3.75, E2E 25; from intent TTFT 11, E2E 26
    assert meets_slo(record, Slo(ttft_ms=10, tpot_ms=3.75, e2e_ms=25))
    assert not meets_slo(record, Slo(ttft_ms=9.9))
    assert not meets_slo(record, Slo(tpot_ms=3.7))
    assert not meets_slo(record, Slo(e2e_ms=24))
    assert not meets_slo(record, Slo(ttft_ms=10.5, from_intended=True))
    assert meets_slo(make(tokens=1), Slo(tpot_ms=0.0))  # one token: TPOT counts as 0, as in vLLM
    assert not meets_slo(make(error="http_5xx"), Slo())


def test_the_itl_slo_holds_a_requests_mean_chunk_gap():
    from servelab.analyse.metrics import mean_itl_ms

    record = make(sent_ms=0, chunks_ms=(10, 12, 20, 22), end_ms=23)  # gaps 2, 8, 2: mean 4, max 8
    assert mean_itl_ms(record) == pytest.approx(4.0)
    assert meets_slo(record, Slo(itl_ms=4.0)) and not meets_slo(record, Slo(itl_ms=3.9))
    assert mean_itl_ms(make(chunks_ms=(10,))) is None
    assert meets_slo(make(chunks_ms=(10,)), Slo(itl_ms=0.0))  # one chunk: mean ITL counts as 0


# ------------------------------------------------------------------------------------------ per point
def test_throughputs_divide_successful_work_by_the_point_duration():
    records = [
        make(0, intended_ms=0, sent_ms=0, chunks_ms=(10, 20), end_ms=40, tokens=4, prompt=10),
        make(1, intended_ms=20, sent_ms=21, chunks_ms=(30, 50), end_ms=100, tokens=6, prompt=20),
        make(
            2,
            intended_ms=30,
            sent_ms=30,
            chunks_ms=(),
            end_ms=60,
            tokens=None,
            prompt=None,
            error="http_5xx",
        ),
    ]
    seconds = duration_s(records)
    assert seconds == 0.1
    assert output_tokens_per_s(records, seconds) == pytest.approx(100.0)
    assert total_tokens_per_s(records, seconds) == pytest.approx(400.0)
    assert requests_per_s(records, seconds) == pytest.approx(20.0)
    assert success_fraction(records) == pytest.approx(2 / 3)
    assert goodput_requests_per_s(records, seconds, Slo(e2e_ms=50)) == pytest.approx(10.0)


# ------------------------------------------------------------------------------------------ summary
def _points() -> dict[str, PointRecord]:
    return {
        "p": PointRecord("p", "dep", "llamacpp", "m", "en", "poisson", 4.0, "done", 0, schedule_kept=True),
        "idle": PointRecord("idle", "dep", "llamacpp", "m", "en", "concurrency", 8, "failed", 0),
    }


def test_the_summary_is_tidy_one_row_per_point_metric_and_stat():
    records = [make(0), make(1, sent_ms=2), make(2, error="timeout")]
    summary = summarize(records, _points())
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert not summary.duplicated(["point_id", "metric", "stat"]).any()
    ttft = summary[(summary.point_id == "p") & (summary.metric == "ttft_ms")]
    assert list(ttft.stat) == list(DISTRIBUTION_STATS)
    assert set(ttft.unit) == {"ms"}
    row = summary[(summary.point_id == "p") & (summary.metric == "output_tok_s")].iloc[0]
    assert (row.stat, row.unit, row.load_kind, row.load_value) == ("value", "tok/s", "poisson", 4.0)
    assert summary[(summary.point_id == "p") & (summary.metric == "schedule_kept")].value.iloc[0] == 1.0
    requests = summary[summary.metric == "requests"].set_index("point_id").value
    assert requests.to_dict() == {"p": 3.0, "idle": 0.0}


def test_warmup_records_never_enter_the_summary():
    measured = [make(0), make(1)]
    warm = make(9, warmup=True, sent_ms=0, chunks_ms=(500, 900), end_ms=1000, tokens=100)
    assert summarize(measured + [warm], _points()).equals(summarize(measured, _points()))


def test_percentiles_use_linear_interpolation():
    records = [
        make(i, sent_ms=0, chunks_ms=(v,), end_ms=v + 1, tokens=1) for i, v in enumerate([10, 20, 30, 40, 50])
    ]
    ttft = summarize(records).query("metric == 'ttft_ms'").set_index("stat").value
    got = [
        ttft["p50"],
        ttft["p90"],
        ttft["p99"],
        ttft["p99.9"],
        ttft["mean"],
        ttft["min"],
        ttft["max"],
        ttft["count"],
    ]
    assert got == pytest.approx([30.0, 46.0, 49.6, 49.96, 30.0, 10.0, 50.0, 5.0], rel=1e-12)
    assert ttft["std"] == pytest.approx(np.std([10, 20, 30, 40, 50]))


def test_goodput_appears_only_with_an_slo():
    records = [make(0), make(1)]
    assert "goodput_req_s" not in set(summarize(records).metric)
    assert "goodput_req_s" in set(summarize(records, slo=Slo(ttft_ms=100)).metric)


def test_wide_gives_one_row_per_point_with_readable_columns():
    table = wide(summarize([make(0), make(1, point="q")], _points()))
    assert sorted(table.point_id) == ["idle", "p", "q"]
    assert {"ttft_ms p99", "tpot_ms mean", "output_tok_s", "success_rate"} <= set(table.columns)
    assert table.set_index("point_id").loc["p", "ttft_ms p50"] == 10.0


def test_error_breakdown_counts_failures_by_class():
    records = [
        make(0, error="timeout"),
        make(1, error="timeout"),
        make(2, error="http_429"),
        make(3),
        make(4, error="connect", warmup=True),
    ]
    table = error_breakdown(records)
    assert table.to_dict("records") == [
        {"point_id": "p", "error_class": "http_429", "requests": 1},
        {"point_id": "p", "error_class": "timeout", "requests": 2},
    ]


# ------------------------------------------------------------------------------------------ vLLM agreement
MILLISECONDS_TO_SECONDS_CONVERSION = 1000


@dataclasses.dataclass
class RequestFuncOutput:
    """The fields of vLLM's RequestFuncOutput that calculate_metrics reads (times in seconds)."""

    success: bool
    latency: float
    ttft: float
    itl: list[float]
    output_tokens: int | None
    prompt_len: int


def vllm_calculate_metrics(
    outputs: list[RequestFuncOutput],
    dur_s: float,
    selected_percentiles: list[float],
    goodput_config_dict: dict[str, float],
) -> dict[str, float]:
    """vLLM's `calculate_metrics` (vllm/benchmarks/serve.py), restated line by line for the fields it reports.

    The tokenizer branch (output_tokens missing) is left out: every recorded request has a server count.
    """
    actual_output_lens: list[int] = []
    total_input = 0
    completed = 0
    good_completed = 0
    itls: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []
    ttfts: list[float] = []
    e2els: list[float] = []
    for i in range(len(outputs)):
        if outputs[i].success:
            output_len = outputs[i].output_tokens
            if not output_len:
                output_len = 1
            actual_output_lens.append(output_len)
            total_input += outputs[i].prompt_len
            tpot = 0.0
            if output_len > 1:
                latency_minus_ttft = outputs[i].latency - outputs[i].ttft
                tpot = latency_minus_ttft / (output_len - 1)
                tpots.append(tpot)
            all_tpots.append(tpot)
            itls += outputs[i].itl
            ttfts.append(outputs[i].ttft)
            e2els.append(outputs[i].latency)
            completed += 1
        else:
            actual_output_lens.append(0)
    if goodput_config_dict:
        valid_metrics = []
        slo_values = []
        if "ttft" in goodput_config_dict:
            valid_metrics.append(ttfts)
            slo_values.append(goodput_config_dict["ttft"] / MILLISECONDS_TO_SECONDS_CONVERSION)
        if "tpot" in goodput_config_dict:
            valid_metrics.append(all_tpots)
            slo_values.append(goodput_config_dict["tpot"] / MILLISECONDS_TO_SECONDS_CONVERSION)
        if "e2el" in goodput_config_dict:
            valid_metrics.append(e2els)
            slo_values.append(goodput_config_dict["e2el"] / MILLISECONDS_TO_SECONDS_CONVERSION)
        for req_metric in zip(*valid_metrics, strict=True):
            if all([s >= r for s, r in zip(slo_values, req_metric, strict=True)]):
                good_completed += 1
    result = {
        "completed": completed,
        "total_input": total_input,
        "total_output": sum(actual_output_lens),
        "request_throughput": completed / dur_s,
        "request_goodput": good_completed / dur_s,
        "output_throughput": sum(actual_output_lens) / dur_s,
        "total_token_throughput": (total_input + sum(actual_output_lens)) / dur_s,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        result[f"mean_{name}_ms"] = np.mean(values or 0) * 1000
        result[f"median_{name}_ms"] = np.median(values or 0) * 1000
        result[f"std_{name}_ms"] = np.std(values or 0) * 1000
        for p in selected_percentiles:
            result[f"p{p:g}_{name}_ms"] = np.percentile(values or 0, p) * 1000
    return result


def as_vllm_output(record: RequestRecord) -> RequestFuncOutput:
    """What vLLM's client would have recorded for the same stream, in seconds from the same send time."""
    if not record.ok:
        return RequestFuncOutput(False, 0.0, 0.0, [], None, 0)
    first = record.first_token_ns
    ttft = (first - record.actual_send_ns) / 1e9
    itl = [(b - a) / 1e9 for a, b in pairwise(record.chunk_ns)]
    return RequestFuncOutput(
        True,
        (record.end_ns - record.actual_send_ns) / 1e9,
        ttft,
        itl,
        record.output_tokens,
        record.prompt_tokens or 0,
    )


def recorded() -> list[RequestRecord]:
    rows = [json.loads(line) for line in RECORDED.read_text(encoding="utf-8").splitlines() if line.strip()]
    names = {f.name for f in dataclasses.fields(RequestRecord)}
    return [RequestRecord(**{k: v for k, v in row.items() if k in names}) for row in rows]


def edge_cases() -> list[RequestRecord]:
    """Requests vLLM treats specially: one output token (no TPOT; TPOT 0 for goodput), a failure, no prompt count."""
    return [
        make(0, point="edge", chunks_ms=(12,), end_ms=13, tokens=1),
        make(1, point="edge", sent_ms=3, chunks_ms=(20, 21, 40, 41, 60), end_ms=62, tokens=9),
        make(2, point="edge", error="http_5xx", chunks_ms=(), end_ms=5, tokens=None),
        make(3, point="edge", sent_ms=10, chunks_ms=(30, 31), end_ms=45, tokens=3, prompt=None),
    ]


def test_the_recorded_requests_are_real_and_varied():
    records = recorded()
    assert len({r.point_id for r in records}) == 2
    assert any(r.warmup for r in records) and any(not r.ok for r in records)
    assert any(r.chunk_count < (r.output_tokens or 0) for r in records)  # multi-token chunks (Korean)
    assert all(r.token_source == "server" for r in records if r.ok)


@pytest.mark.parametrize(
    "slo", [Slo(ttft_ms=200.0, tpot_ms=40.0), Slo(e2e_ms=800.0), Slo(ttft_ms=5000.0, e2e_ms=3000.0)]
)
@pytest.mark.parametrize("source", ["recorded", "edge_cases"])
def test_servelab_agrees_with_vllm_bench_serve_on_the_same_requests(source, slo):
    records = recorded() if source == "recorded" else edge_cases()
    summary = summarize(records, slo=slo)
    percentiles = [50.0, 90.0, 95.0, 99.0, 99.9]
    goodput = {
        name: limit
        for name, limit in (("ttft", slo.ttft_ms), ("tpot", slo.tpot_ms), ("e2el", slo.e2e_ms))
        if limit is not None
    }
    checked = 0
    for point_id in sorted({r.point_id for r in records}):
        measured = [r for r in records if r.point_id == point_id and not r.warmup]
        ours = summary[summary.point_id == point_id].set_index(["metric", "stat"]).value
        theirs = vllm_calculate_metrics(
            [as_vllm_output(r) for r in measured], duration_s(measured), percentiles, goodput
        )
        assert ours["requests", "value"] - ours["errors", "value"] == theirs["completed"]
        assert ours["req_s", "value"] == pytest.approx(theirs["request_throughput"], rel=1e-12)
        assert ours["output_tok_s", "value"] == pytest.approx(theirs["output_throughput"], rel=1e-12)
        assert ours["total_tok_s", "value"] == pytest.approx(theirs["total_token_throughput"], rel=1e-12)
        assert ours["goodput_req_s", "value"] == pytest.approx(theirs["request_goodput"], rel=1e-12)
        for metric, name in (("ttft_ms", "ttft"), ("tpot_ms", "tpot"), ("itl_ms", "itl"), ("e2e_ms", "e2el")):
            assert ours[metric, "mean"] == pytest.approx(theirs[f"mean_{name}_ms"], rel=1e-9), metric
            assert ours[metric, "p50"] == pytest.approx(theirs[f"median_{name}_ms"], rel=1e-9), metric
            assert ours[metric, "std"] == pytest.approx(theirs[f"std_{name}_ms"], rel=1e-9, abs=1e-12), metric
            for p in percentiles:
                assert ours[metric, f"p{p:g}"] == pytest.approx(theirs[f"p{p:g}_{name}_ms"], rel=1e-9), (
                    metric,
                    p,
                )
            checked += 1
    assert checked >= 4


def test_the_agreement_check_would_notice_a_different_tpot_definition():
    # TPOT over all tokens (E2E / tokens) instead of vLLM's first-token-excluded definition must disagree.
    records = [r for r in recorded() if r.ok and not r.warmup]
    wrong = np.mean([(r.end_ns - r.actual_send_ns) / 1e6 / r.output_tokens for r in records])
    theirs = vllm_calculate_metrics([as_vllm_output(r) for r in records], duration_s(records), [50.0], {})
    assert not math.isclose(wrong, theirs["mean_tpot_ms"], rel_tol=1e-3)


def test_summary_columns_hold_plain_types():
    summary = summarize(recorded())
    assert summary["value"].dtype == float
    assert pd.api.types.is_string_dtype(summary["metric"]) or summary["metric"].dtype == object


# --------------------------------------------------------------------- the GPU comparison's bookkeeping
def test_vllm_bench_rounds_pool_as_one_run_and_the_command_asks_for_greedy(tmp_path: Path) -> None:
    from servelab.checks.agreement import _pooled_bench, vllm_bench_args, vllm_bench_command
    from servelab.serve.deploy import RunningServer

    rounds = [
        {"completed": 100, "total_output_tokens": 12_800, "duration": 10.0, "mean_ttft_ms": 50.0, "mean_tpot_ms": 10.0},
        {"completed": 300, "total_output_tokens": 38_400, "duration": 40.0, "mean_ttft_ms": 70.0, "mean_tpot_ms": 12.0},
    ]
    pooled = _pooled_bench(rounds)
    assert pooled["output_throughput"] == pytest.approx(51_200 / 50.0)
    assert pooled["mean_ttft_ms"] == pytest.approx(65.0) and pooled["mean_tpot_ms"] == pytest.approx(11.5)
    assert _pooled_bench([]) == {"output_throughput": None, "mean_ttft_ms": None, "mean_tpot_ms": None}

    server = RunningServer(
        name="tiny", framework="vllm", model="m", served_model="tiny", api_flavour="openai", base_url="http://127.0.0.1:1",
        port=1, pid=1, log_path="", argv=[], launched_ns=0, ready_ns=0, model_path="/m",
    )
    argv = vllm_bench_args(server.base_url, server.served_model, server.model_path, 16, 64, 256, 128, tmp_path, seed=3, label="-r1")
    assert vllm_bench_command(argv, "py")[:5] == ["py", "-m", "vllm.entrypoints.cli.main", "bench", "serve"]
    assert argv[argv.index("--temperature") + 1] == "0" and "--ignore-eos" in argv
    assert argv[argv.index("--result-filename") + 1] == "vllm-bench-c16-r1.json"
    assert argv[argv.index("--random-input-len") + 1] == "256" and argv[argv.index("--tokenizer") + 1] == "/m"
