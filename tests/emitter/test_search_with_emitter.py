"""The SLO search against the reference emitter (a stand-in engine whose timing is known): with 2 slots, a TTFT of
20 ms and 8 tokens 10 ms apart, concurrency up to 2 keeps TTFT near 20 ms and concurrency 4 makes half the
requests wait a whole request (about 90 ms) for a slot, so a 60 ms TTFT SLO has its knee at concurrency 2."""

from __future__ import annotations

import json

import pandas as pd
from servelab.checks.search import SEARCH_FILE, knee_table, run_search
from servelab.measure.clients import Target
from servelab.params import parse_params
from servelab.records import SUMMARY_FILE, latest_points
from test_emitter import running_emitter

PARAMS = {
    "name": "search-emitter",
    "deployments": [{"name": "emitter", "model": "servelab-emitter", "engine": {"kind": "llamacpp"}}],
    "sweep": {
        "load": [{"kind": "concurrency", "values": [1]}],
        "input_tokens": 8,
        "output_tokens": 8,
        "requests_per_point": 12,
        "warmup_requests": 0,
    },
    "slo": {"ttft_ms": 60, "itl_ms": 30},
    "search": {"load_kind": "concurrency", "start": 1, "factor": 2, "max_value": 8, "min_gain": 0.2},
}


def test_the_search_finds_the_knee_where_the_emitters_slots_fill(tmp_path):
    params = parse_params(PARAMS)
    with running_emitter("--ttft-ms", "20", "--itl-ms", "10", "--max-streams", "2") as base_url:
        target = Target("emitter", "emitter", "servelab-emitter", "servelab-emitter", base_url, "openai")
        results = run_search(params, tmp_path, {"emitter": target})
    search = results["emitter"]
    assert search["stop_reason"] == "slo_broken", search
    assert [step["load_value"] for step in search["steps"]] == [1, 2, 4]
    assert search["knee"] == 2
    assert json.loads((tmp_path / SEARCH_FILE).read_text())["searches"]["emitter"]["knee"] == 2

    # A normal run folder: every step is a finished point, and summary.csv has goodput beside throughput.
    points = latest_points(tmp_path)
    assert sorted(p.load_value for p in points.values()) == [1, 2, 4]
    assert {p.status for p in points.values()} == {"done"}
    summary = pd.read_csv(tmp_path / SUMMARY_FILE)
    by_load = summary[summary.stat == "value"].pivot_table(index="load_value", columns="metric", values="value")
    assert (by_load.loc[[1.0, 2.0], "goodput_req_s"] == by_load.loc[[1.0, 2.0], "req_s"]).all()
    assert by_load.loc[4.0, "goodput_req_s"] < 0.75 * by_load.loc[4.0, "req_s"]  # the waiting half misses the SLO
    table = knee_table(tmp_path)
    assert table.loc[table.knee, "load_value"].tolist() == [2]
