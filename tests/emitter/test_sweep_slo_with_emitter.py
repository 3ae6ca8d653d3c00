"""A sweep with `slo` in its params writes goodput per point into summary.csv, and records its workload in the
manifest; against the reference emitter (a stand-in engine whose timing is known: TTFT 20 ms, tokens 5 ms apart)."""

from __future__ import annotations

import json

import pandas as pd
from servelab.analyse.summary import slo_of, write_summary
from servelab.checks.calibrate import running_emitter
from servelab.clock import now_ns
from servelab.measure.sweep import run_sweep
from servelab.params import parse_params
from servelab.records import MANIFEST_FILE, SUMMARY_FILE
from servelab.serve.deploy import Fleet, RunningServer


def _fleet(emitter, run_dir) -> Fleet:
    base_url = emitter.base_url
    server = RunningServer(
        name="emitter", framework="vllm", model="servelab-emitter", served_model="servelab-emitter",
        api_flavour="openai", base_url=base_url, port=int(base_url.rsplit(":", 1)[1]), pid=emitter.process.pid,
        log_path=str(run_dir / "emitter.log"), argv=[], launched_ns=now_ns(), ready_ns=now_ns(),
    )  # fmt: skip
    return Fleet(run_dir=run_dir, servers={"emitter": server}, owned=False)


def test_a_sweep_with_slos_writes_goodput_per_point_and_its_workload_to_the_manifest(tmp_path):
    params = parse_params(
        {
            "name": "slo",
            "deployments": [{"name": "emitter", "model": "servelab-emitter", "engine": {"kind": "vllm"}}],
            "sweep": {
                "input_tokens": 8, "output_tokens": 6, "load": [{"kind": "concurrency", "values": [1, 2]}],
                "requests_per_point": 6, "warmup_requests": 1,
                "workload": {"kind": "shared_prefix", "prefix_tokens": 16},
            },
            # every request meets the TTFT limit; none meets a 1 ms ITL (the emitter's tokens are 5 ms apart)
            "slo": {"ttft_ms": 5000},
        }
    )  # fmt: skip
    strict = params.model_copy(update={"slo": params.slo.model_copy(update={"itl_ms": 1.0})})
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"params": {}}))
    with running_emitter(20.0, 5.0) as emitter:
        run_sweep(params, tmp_path, _fleet(emitter, tmp_path), progress=False)
        loose = write_summary(tmp_path, slo=slo_of(params))
        (tmp_path / "strict").mkdir()
        run_sweep(strict, tmp_path / "strict", _fleet(emitter, tmp_path / "strict"), progress=False)
        tight = write_summary(tmp_path / "strict", slo=slo_of(strict))
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["workload"].startswith("shared prefix: a 16-token system prompt")
    for summary, expected in ((loose, "all"), (tight, "none")):
        values = summary[summary.stat == "value"].pivot_table(index="point_id", columns="metric", values="value")
        assert len(values) == 2
        if expected == "all":
            assert (values.goodput_req_s == values.req_s).all() and (values.req_s > 0).all()
        else:
            assert (values.goodput_req_s == 0).all()
    written = pd.read_csv(tmp_path / SUMMARY_FILE)
    assert set(written[written.metric == "goodput_req_s"].unit) == {"req/s"}
