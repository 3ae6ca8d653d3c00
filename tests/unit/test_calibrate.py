"""Calibration: a quick run against the real reference emitter, the ceiling warnings, the manifest and the cache.

No assertion here is about time: how fast and how exactly the client measures are figures for
benchmarks/client_ceiling.py and docs/calibration.md. These tests pin down that the bookkeeping is right.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from servelab.analyse import metrics
from servelab.checks.calibrate import (
    Calibration,
    Deviation,
    Level,
    cached_calibration,
    calibrate,
    ceiling_warnings,
    format_calibration,
    is_sustained,
    record_calibration,
    save_calibration,
)
from servelab.manifest import host_info, read_manifest, write_manifest
from servelab.records import PointRecord, RequestRecord

MS = 1_000_000


# ------------------------------------------------------------------------------------------ against the emitter
@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Calibration, object]:
    cache = tmp_path_factory.mktemp("cache") / "calibration.json"
    result = calibrate(
        quick=True, concurrency=(8, 32), rate_fractions=(0.5,), level_s=0.6, cache_path=cache, progress=False
    )
    return result, cache


@pytest.mark.slow
def test_a_quick_calibration_against_the_reference_emitter_accounts_for_every_request_and_token(quick):
    calibration, _ = quick
    assert [(lv.mode, lv.value) for lv in calibration.levels][:2] == [("concurrency", 8), ("concurrency", 32)]
    assert [lv.mode for lv in calibration.levels].count("rate") in (0, 1)
    for level in calibration.levels:
        assert level.requests > 0 and level.errors == 0
        # The emitter recorded exactly the requests the client measured, and every one of their tokens.
        assert level.ttft_ms.true["count"] == level.ttft_ms.reported["count"] == level.requests
        assert level.itl_ms.true["count"] == level.itl_ms.reported["count"] == level.requests * 63
        assert level.chunks_s > 0 and level.req_s > 0
        assert level.ttft_ms.error["mean"] == pytest.approx(
            level.ttft_ms.reported["mean"] - level.ttft_ms.true["mean"]
        )
        assert level.sustained == is_sustained(
            level.ttft_ms, level.itl_ms, level.errors, level.requests, level.rate_error_pct
        )
    assert calibration.cores == len(calibration.client_cpus) == 1
    assert calibration.event_loop in ("uvloop", "asyncio")


@pytest.mark.slow
def test_the_ceiling_is_the_best_sustained_level_and_rate_levels_aim_at_a_fraction_of_it_against_the_reference_emitter(
    quick,
):
    calibration, _ = quick
    closed = [lv for lv in calibration.levels if lv.mode == "concurrency"]
    sustained = [lv for lv in closed if lv.sustained]
    if not sustained:
        assert calibration.max_chunks_s == 0 and calibration.ceiling_concurrency is None
        return
    best = max(sustained, key=lambda lv: lv.chunks_s)
    assert (calibration.max_chunks_s, calibration.ceiling_concurrency) == (best.chunks_s, best.value)
    assert calibration.max_tok_s == calibration.max_chunks_s
    rate = next(lv for lv in calibration.levels if lv.mode == "rate")
    assert rate.value == pytest.approx(0.5 * calibration.max_req_s, abs=0.05)
    assert rate.target_req_s == pytest.approx(rate.value, rel=1e-6)  # constant arrivals: exactly the rate
    assert calibration.rate_max_error_pct == abs(rate.rate_error_pct)


@pytest.mark.slow
def test_a_calibration_against_the_reference_emitter_is_cached_as_strict_json_and_prints_a_table(quick):
    calibration, cache = quick
    text = cache.read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the cached JSON"))
    assert cached_calibration(cache).as_dict() == calibration.as_dict()
    table = format_calibration(calibration)
    assert "8 streams" in table and "32 streams" in table and "req/s" in table
    assert ("ceiling on 1 core(s)" in table) == bool(calibration.max_chunks_s)


# ------------------------------------------------------------------------------------------ without the emitter
def _deviation(reported_mean: float, true_mean: float, reported_p50: float | None = None) -> Deviation:
    p50 = reported_p50 if reported_p50 is not None else reported_mean
    return Deviation(
        {"count": 10, "mean": reported_mean, "p50": p50, "p99": reported_mean},
        {"count": 10, "mean": true_mean, "p50": true_mean, "p99": true_mean},
        {"mean": reported_mean - true_mean, "p50": p50 - true_mean, "p99": reported_mean - true_mean},
    )


def _level(value: float, chunks_s: float, req_s: float, sustained: bool = True) -> Level:
    return Level(
        mode="concurrency",
        value=value,
        requests=100,
        errors=0,
        window_s=1.0,
        req_s=req_s,
        chunks_s=chunks_s,
        ttft_ms=_deviation(20.1, 20.0),
        itl_ms=_deviation(5.0, 5.0),
        schedule_lag_p99_ms=0.3,
        client_cpu_pct=50.0,
        emitter_lateness_us={"mean": 100.0, "p50": 90.0, "p99": 300.0, "max": 900.0},
        emitter_tokens_per_write=1.0,
        sustained=sustained,
    )


def _calibration(
    max_req_s: float = 100.0, max_chunks_s: float = 6400.0, hostname: str | None = None
) -> Calibration:
    host = host_info() | ({"hostname": hostname} if hostname else {})
    return Calibration(
        created_utc="2026-01-01T00:00:00+00:00",
        host=host,
        packages={"servelab": "0.1.0"},
        cores=1,
        client_cpus=[0],
        emitter_cpus=[1],
        emitter_workers=1,
        event_loop="uvloop",
        ttft_ms=20.0,
        itl_ms=5.0,
        output_tokens=64,
        quick=False,
        levels=[
            _level(64, max_chunks_s, max_req_s),
            _level(128, 2 * max_chunks_s, 2 * max_req_s, sustained=False),
        ],
        max_req_s=max_req_s,
        max_chunks_s=max_chunks_s,
        max_tok_s=max_chunks_s,
        ceiling_concurrency=64,
    )


def test_a_level_is_sustained_only_with_itl_mean_and_median_within_one_percent_and_ttft_within_two():
    good = _deviation(5.0, 5.0)
    assert is_sustained(_deviation(20.3, 20.0), good, errors=0, requests=10)
    # A constant delay on every read leaves the mean ITL exact; the bunched-up median and the TTFT give it away.
    assert not is_sustained(
        _deviation(20.0, 20.0), _deviation(5.0, 5.0, reported_p50=4.9), errors=0, requests=10
    )
    assert not is_sustained(_deviation(20.5, 20.0), good, errors=0, requests=10)
    assert is_sustained(_deviation(1.15, 1.0), good, errors=0, requests=10)  # 0.2 ms floor below 10 ms
    assert not is_sustained(_deviation(20.0, 20.0), _deviation(5.06, 5.0), errors=0, requests=10)
    assert not is_sustained(_deviation(20.0, 20.0), good, errors=1, requests=10)
    assert not is_sustained(_deviation(20.0, 20.0), good, errors=0, requests=10, rate_error_pct=-1.5)


def test_a_calibration_survives_the_round_trip_through_json():
    calibration = _calibration()
    again = Calibration.from_dict(json.loads(json.dumps(calibration.as_dict(), allow_nan=False)))
    assert again == calibration
    assert isinstance(again.levels[0].itl_ms, Deviation)


def _records(point_id: str, requests: int, chunks: int, spacing_ms: float) -> list[RequestRecord]:
    """`requests` back-to-back successful requests of `chunks` chunks, `spacing_ms` apart."""
    records = []
    for index in range(requests):
        start = round(index * spacing_ms * MS)
        chunk_ns = [start + MS + k * MS // 10 for k in range(chunks)]
        records.append(
            RequestRecord(
                point_id,
                index,
                "dep",
                "fw",
                "model",
                "en",
                False,
                intended_send_ns=start,
                actual_send_ns=start,
                first_token_ns=chunk_ns[0],
                end_ns=chunk_ns[-1],
                chunk_ns=chunk_ns,
                chunk_count=chunks,
                output_tokens=chunks,
                token_source="server",
            )  # fmt: skip
        )
    return records


def _summary(records: list[RequestRecord]):
    points = {
        pid: PointRecord(pid, "dep", "fw", "model", "en", "concurrency", 1, "done", 0)
        for pid in {r.point_id for r in records}
    }
    return metrics.summarize(records, points)


def test_ceiling_warnings_fire_only_for_points_above_seventy_percent_of_the_ceiling():
    # 'slow': 10 req/s of 10 chunks (100 chunks/s); 'fast': 1000 req/s of 10 chunks (10,000 chunks/s).
    summary = _summary(_records("slow", 20, 10, 100.0) + _records("fast", 2000, 10, 1.0))
    warnings = ceiling_warnings(_calibration(max_req_s=1000.0, max_chunks_s=10_000.0), summary)
    assert warnings, "a point at the ceiling must be flagged"
    assert all(w.startswith("point fast:") for w in warnings)
    assert any("chunks/s" in w for w in warnings) and any("req/s" in w for w in warnings)
    assert ceiling_warnings(_calibration(max_req_s=1e6, max_chunks_s=1e7), summary) == []


def test_ceiling_warnings_read_the_manifest_form_and_stay_quiet_without_a_calibration():
    summary = _summary(_records("fast", 2000, 10, 1.0))
    from_manifest = _calibration(max_req_s=1000.0, max_chunks_s=10_000.0).as_dict()
    assert ceiling_warnings(from_manifest, summary) == ceiling_warnings(
        Calibration.from_dict(from_manifest), summary
    )
    assert ceiling_warnings(None, summary) == []
    assert ceiling_warnings({"max_req_s": 0, "max_chunks_s": 0}, summary) == []


def test_record_calibration_stores_it_in_the_manifest(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, {"run_id": "run", "calibration": None})
    calibration = _calibration()
    assert record_calibration(run_dir, calibration) is calibration
    manifest = read_manifest(run_dir)
    assert manifest["run_id"] == "run"
    assert manifest["calibration"]["max_req_s"] == 100.0
    assert Calibration.from_dict(manifest["calibration"]) == calibration


def test_record_calibration_takes_this_hosts_cached_one_and_ignores_another_hosts(tmp_path):
    cache = tmp_path / "cache" / "calibration.json"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, {"run_id": "run", "calibration": None})
    assert record_calibration(run_dir, cache_path=cache) is None
    assert read_manifest(run_dir)["calibration"] is None

    save_calibration(_calibration(hostname="some-other-host"), cache)
    assert cached_calibration(cache) is None
    assert record_calibration(run_dir, cache_path=cache) is None

    save_calibration(_calibration(max_req_s=123.0), cache)
    assert record_calibration(run_dir, cache_path=cache).max_req_s == 123.0
    assert read_manifest(run_dir)["calibration"]["max_req_s"] == 123.0


def test_an_unreadable_or_older_cache_is_no_calibration(tmp_path):
    cache = tmp_path / "calibration.json"
    cache.write_text("{not json")
    assert cached_calibration(cache) is None
    cache.write_text(json.dumps(dataclasses.replace(_calibration(), version=0).as_dict()))
    assert cached_calibration(cache) is None


def test_deviation_of_no_values_is_none_not_nan():
    import numpy as np

    deviation = Deviation.of(np.asarray([]), np.asarray([1.0, 2.0]))
    assert deviation.reported["count"] == 0 and deviation.error["mean"] is None
    assert math.isinf(deviation.relative("mean"))
    assert not is_sustained(deviation, deviation, errors=0, requests=1)


def test_the_report_warns_where_prompts_came_out_far_from_their_target():
    import pandas as pd
    from servelab.report.tables import prompt_length_warnings

    rows = []
    for language, tokens in (("en", 260.0), ("ko", 514.0)):
        for point in ("c1", "c16"):
            rows.append({"point_id": f"tiny/{language}/{point}", "deployment": "tiny", "language": language,
                         "metric": "prompt_tokens", "stat": "mean", "value": tokens})
    summary = pd.DataFrame(rows)
    notes = prompt_length_warnings(summary, 256)
    assert len(notes) == 1 and "tiny / ko averaged 514 tokens" in notes[0] and "target of 256" in notes[0]
    against_514 = prompt_length_warnings(summary, 514)
    assert len(against_514) == 1 and "tiny / en averaged 260 tokens" in against_514[0]
    assert prompt_length_warnings(summary.iloc[0:0], 256) == []
