"""Servers that answer badly: HTTP 429/500/503, malformed SSE and NDJSON, a reset connection, a stalled stream.

Each fault is injected by a real process: the reference emitter's fault flags, or tools/faultproxy in front
of the real llama-server. The sweep runs for real (`run_sweep`), and every test checks that no request was lost:
each one the server received is a record on disk, with the fault named in its error_class.
"""

from __future__ import annotations

import httpx
import pytest
from fault_harness import check_nothing_lost, emitter, faultproxy, fleet_at, sweep_params
from servelab.measure.sweep import run_sweep
from servelab.records import latest_points, read_requests

pytestmark = pytest.mark.slow

EMITTER_FAULTS = [
    pytest.param(["--status", "429"], "http_429", 429, id="status-429"),
    pytest.param(["--status", "500"], "http_5xx", 500, id="status-500"),
    pytest.param(["--status", "503"], "http_5xx", 503, id="status-503"),
    pytest.param(["--malformed"], "protocol", 200, id="malformed-sse"),
    pytest.param(["--reset-after", "1"], "connection_reset", 200, id="reset-after-1"),
    pytest.param(["--stall-after", "1"], "timeout", 200, id="stall-after-1"),
]


@pytest.mark.parametrize(("flags", "error_class", "status"), EMITTER_FAULTS)
def test_fault_injection_by_the_emitter_is_recorded_per_request_and_the_sweep_goes_on(tmp_path, flags, error_class, status):
    """Expectation: when the emitter faults every request, every request still comes back as one record on disk
    whose error_class names the fault (and whose http_status is the one sent); none is lost (the emitter
    received exactly the requests on disk, retries included); both points are marked failed, and run_sweep
    goes from the first point to the second and returns instead of raising. A stalled stream ends as a
    timeout within request_timeout_s."""
    timeout_s = 0.5 if error_class == "timeout" else 10.0
    params = sweep_params(
        load=[{"kind": "concurrency", "values": [1, 2]}], requests_per_point=4, request_timeout_s=timeout_s
    )
    with emitter(*flags) as (url, process):
        run_sweep(params, tmp_path, fleet_at(tmp_path, url, process.pid), progress=False)
        received = httpx.get(url + "/emitter/stats").json()["requests"]["completions"]
    records = read_requests(tmp_path)
    assert {r.error_class for r in records} == {error_class}
    assert {r.http_status for r in records} == {status}
    assert [p.status for p in latest_points(tmp_path).values()] == ["failed", "failed"]
    assert check_nothing_lost(tmp_path, warmup_requests=1) == 2 * (4 + 1)
    assert received == sum(1 + r.retries for r in records)
    if error_class == "timeout":
        assert all((r.end_ns - r.actual_send_ns) / 1e9 < timeout_s + 5 for r in records)


def test_fault_injection_of_some_503s_marks_only_those_requests_and_the_point_done(tmp_path):
    """Expectation: with the emitter answering 503 to a seeded 30% of requests, exactly the requests it faulted
    are failed records (class http_5xx; none retried, since a 503 is an answer), the others completed with all
    their tokens, and the point, under max_error_rate 0.5, is marked done with its error count."""
    params = sweep_params(requests_per_point=30, warmup_requests=0, output_tokens=3)
    with emitter("--status", "503", "--fail-rate", "0.3", "--seed", "3") as (url, process):
        run_sweep(params, tmp_path, fleet_at(tmp_path, url, process.pid), progress=False)
        counts = httpx.get(url + "/emitter/stats").json()["requests"]
    records = read_requests(tmp_path)
    failed = [r for r in records if not r.ok]
    assert 0 < len(failed) == counts["faulted"] < len(records) == counts["completions"] == 30
    assert {r.error_class for r in failed} == {"http_5xx"} and all(r.retries == 0 for r in failed)
    assert all(r.output_tokens == 3 for r in records if r.ok)
    (point,) = latest_points(tmp_path).values()
    assert (point.status, point.errors) == ("done", len(failed))
    check_nothing_lost(tmp_path, warmup_requests=0)


PROXY_FAULTS = [
    pytest.param("ollama", "malformed", "protocol", id="ollama-malformed-ndjson"),
    pytest.param("ollama", "reset-after=2", "connection_reset", id="ollama-reset-after-2"),
    pytest.param("openai", "malformed", "protocol", id="openai-malformed-sse"),
    pytest.param("openai", "status=503", "http_5xx", id="openai-status-503"),
]


@pytest.mark.engine
@pytest.mark.parametrize(("flavour", "fault", "error_class"), PROXY_FAULTS)
def test_fault_injection_by_a_proxy_in_front_of_llama_server_breaks_every_other_request_and_loses_none(
    tmp_path, embedded_server, flavour, fault, error_class
):
    """Expectation: tools/faultproxy in front of the real llama-server breaks every second request (Ollama
    NDJSON translated from the engine's stream, or its own OpenAI SSE). Exactly the requests the proxy faulted
    are failed records of the fault's class; the others carry the engine's own token counts; the proxy received
    exactly the requests on disk; the point is marked done (half failed is not more than max_error_rate 0.5)."""
    params = sweep_params(name="proxied", requests_per_point=6, warmup_requests=1, output_tokens=8, request_timeout_s=60)
    with faultproxy(embedded_server.base_url, fault, every=2, flavour=flavour) as (url, process):
        run_sweep(params, tmp_path, fleet_at(tmp_path, url, process.pid, name="proxied", flavour=flavour), progress=False)
        stats = httpx.get(url + "/faultproxy/stats").json()
    records = read_requests(tmp_path)
    failed = [r for r in records if not r.ok]
    assert len(failed) == stats["faulted"] == len(records) // 2
    assert {r.error_class for r in failed} == {error_class}
    completed = [r for r in records if r.ok]
    assert all(r.token_source == "server" and 1 <= (r.output_tokens or 0) <= 8 for r in completed)
    assert stats["requests"] == sum(1 + r.retries for r in records) == 7
    (point,) = latest_points(tmp_path).values()
    assert point.status == "done"
    check_nothing_lost(tmp_path, warmup_requests=1)
