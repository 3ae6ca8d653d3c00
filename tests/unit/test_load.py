"""Load generation: arrival schedules (checked statistically), closed and open loops against a real HTTP server,
warm-up, duration runs, schedule lag, and the max-throughput search."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import pytest
from servelab.analyse.metrics import Slo
from servelab.checks.search import find_max_throughput
from servelab.clock import now_ns
from servelab.measure.clients import Target
from servelab.measure.load import (
    LAG_LIMIT_MS,
    arrival_offsets_ns,
    make_client,
    run_point,
    schedule_lag_limit_ms,
    sleep_until,
)
from servelab.measure.prompts import Prompt
from servelab.measure.sweep import plan_points
from servelab.params import ConcurrencyLoad, RateLoad, Sweep, parse_params
from servelab.records import RequestRecord

PROMPTS = [Prompt(f"prompt {i}", "en", 2) for i in range(8)]


# ------------------------------------------------------------------------------------------ schedules
def _intervals_s(offsets: list[int]) -> list[float]:
    return [(b - a) / 1e9 for a, b in pairwise(offsets)]


def test_constant_arrivals_are_exactly_one_interval_apart():
    offsets = arrival_offsets_ns("constant", 8.0, random.Random(0), count=100)
    assert offsets == [round(i / 8.0 * 1e9) for i in range(100)]


def test_poisson_arrivals_have_the_asked_mean_rate_and_exponential_spread():
    offsets = arrival_offsets_ns("poisson", 50.0, random.Random(1), count=20_000)
    intervals = _intervals_s(offsets)
    mean = statistics.fmean(intervals)
    assert mean == pytest.approx(1 / 50.0, rel=0.03)
    assert statistics.pstdev(intervals) / mean == pytest.approx(1.0, rel=0.05)  # exponential: CV = 1
    # Memorylessness: about e^-1 of the intervals exceed the mean.
    assert sum(i > mean for i in intervals) / len(intervals) == pytest.approx(math.exp(-1), abs=0.02)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_arrivals_keep_the_mean_rate_and_their_burstiness(burstiness):
    offsets = arrival_offsets_ns("gamma", 20.0, random.Random(2), count=20_000, burstiness=burstiness)
    intervals = _intervals_s(offsets)
    mean = statistics.fmean(intervals)
    assert mean == pytest.approx(1 / 20.0, rel=0.04)
    assert statistics.pstdev(intervals) / mean == pytest.approx(1 / math.sqrt(burstiness), rel=0.06)


def test_schedules_start_at_zero_rise_and_repeat_with_the_seed():
    offsets = arrival_offsets_ns("poisson", 10.0, random.Random(7), count=500)
    assert offsets[0] == 0
    assert offsets == sorted(offsets)
    assert arrival_offsets_ns("poisson", 10.0, random.Random(7), count=500) == offsets
    assert arrival_offsets_ns("poisson", 10.0, random.Random(8), count=500) != offsets


def test_a_duration_schedule_fills_the_duration_and_stops_inside_it():
    offsets = arrival_offsets_ns("poisson", 100.0, random.Random(3), duration_s=60.0)
    assert max(offsets) < 60e9
    assert len(offsets) == pytest.approx(6000, rel=0.04)


def test_with_count_and_duration_the_first_limit_reached_stops():
    assert len(arrival_offsets_ns("constant", 10.0, random.Random(0), count=5, duration_s=100.0)) == 5
    assert len(arrival_offsets_ns("constant", 10.0, random.Random(0), count=500, duration_s=2.0)) == 20


def test_a_ramp_up_rises_linearly_then_holds_the_rate():
    rate, ramp = 200.0, 20.0
    offsets = arrival_offsets_ns("poisson", rate, random.Random(4), duration_s=40.0, ramp_up_s=ramp)
    seconds = [o / 1e9 for o in offsets]
    first_half = sum(s < ramp / 2 for s in seconds)
    second_half = sum(ramp / 2 <= s < ramp for s in seconds)
    steady = sum(ramp <= s for s in seconds)
    # Linear rise from 0: a quarter of the ramp's arrivals in its first half, three quarters in its second.
    assert first_half == pytest.approx(rate * ramp / 8, rel=0.08)
    assert second_half == pytest.approx(3 * rate * ramp / 8, rel=0.05)
    assert steady == pytest.approx(rate * 20.0, rel=0.03)


def test_an_impossible_schedule_is_refused_before_it_starts():
    from servelab.errors import ClientCapacityError

    with pytest.raises(ClientCapacityError, match="lower the rate"):
        arrival_offsets_ns("constant", 1_000_000.0, random.Random(0), duration_s=86_400)
    with pytest.raises(ValueError, match="unknown open-loop kind"):
        arrival_offsets_ns("weibull", 1.0, random.Random(0), count=3)


def test_the_lag_limit_is_five_ms_or_five_percent_of_the_interval_with_a_one_ms_floor():
    assert schedule_lag_limit_ms("concurrency", 64) == LAG_LIMIT_MS == 5.0
    assert schedule_lag_limit_ms("poisson", 1.0) == 5.0
    assert schedule_lag_limit_ms("poisson", 20.0) == pytest.approx(2.5)
    assert schedule_lag_limit_ms("constant", 1000.0) == 1.0


def test_sleep_until_never_wakes_early():
    async def go() -> list[int]:
        early = []
        for step in range(20):
            target = now_ns() + step * 370_000
            await sleep_until(target)
            early.append(target - now_ns())
        return early

    assert max(asyncio.run(go())) <= 0


def test_each_load_point_carries_the_sweep_entry_holding_its_value():
    gamma = RateLoad(kind="gamma", values=(2.0, 4.0), burstiness=0.5, max_concurrency=3)
    closed = ConcurrencyLoad(values=(1, 8), ramp_up_s=2.0)
    poisson = RateLoad(kind="poisson", values=(9.0,))
    params = parse_params(
        {
            "name": "grid",
            "deployments": [{"name": "a", "model": "smollm2", "engine": {"kind": "llamacpp"}}],
            "sweep": {"load": [e.model_dump() for e in (gamma, closed, poisson)]},
        }
    )
    points = {(p.load_kind, p.load_value): p for p in plan_points(params)}
    assert points["gamma", 4.0].load.burstiness == 0.5
    assert points["concurrency", 8].load.ramp_up_s == 2.0
    assert points["poisson", 9.0].load.kind == "poisson"
    assert points["gamma", 2.0].max_concurrency == 3 and points["concurrency", 8].max_concurrency == 8


# ------------------------------------------------------------------------------------------ a real server
class Streamer(BaseHTTPRequestHandler):
    """An OpenAI-compatible completions stream: /<mode>/<tokens>/<ms per token>/v1/completions.

    mode 'parallel' serves requests side by side; 'serial' one at a time (a server at its limit).
    """

    protocol_version = "HTTP/1.1"
    serial = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _, mode, tokens, ms, *_ = self.path.split("/")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lock = self.serial if mode == "serial" else threading.Lock()
        with lock:
            for i in range(int(tokens)):
                time.sleep(float(ms) / 1000)
                self._event({"choices": [{"text": f" t{i}", "finish_reason": None}]})
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": int(tokens)}
            self._event({"choices": [], "usage": usage})
        data = b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))

    def _event(self, event: dict) -> None:
        data = b"data: " + json.dumps(event).encode() + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


@pytest.fixture(scope="module")
def streamer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Streamer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _target(base: str, path: str) -> Target:
    return Target("dep", "fake", "model", "model", f"{base}/{path}", "openai")


def _sweep(load, **kwargs) -> Sweep:
    settings = {"requests_per_point": 10, "warmup_requests": 2, "output_tokens": 4, "request_timeout_s": 30.0}
    return Sweep(load=(load,), **{**settings, **kwargs})


def _entry(sweep: Sweep, kind: str):
    """The sweep's one load entry, which the test names by kind."""
    (load,) = sweep.load
    assert load.kind == kind
    return load


def _run(target: Target, kind: str, value: float, sweep: Sweep, point_id: str = "pt", **kwargs):
    records: list[RequestRecord] = []

    async def go():
        async with make_client(16) as client:
            return await run_point(
                client, target, PROMPTS, _entry(sweep, kind), value, sweep, point_id, records.append, **kwargs
            )

    return asyncio.run(go()), records


def test_a_closed_loop_sends_warmups_first_then_keeps_n_workers_busy(streamer):
    outcome, records = _run(
        _target(streamer, "parallel/4/5"), "concurrency", 3, _sweep(ConcurrencyLoad(values=(3,)))
    )
    warmups = [r for r in records if r.warmup]
    measured = [r for r in records if not r.warmup]
    assert len(warmups) == 2 and len(measured) == 10
    assert {r.request_index for r in warmups} == {0, 1}
    assert sorted(r.request_index for r in measured) == list(range(2, 12))
    assert max(r.end_ns for r in warmups) < min(r.actual_send_ns for r in measured)
    assert (outcome.requests, outcome.errors, outcome.warmup_requests) == (10, 0, 2)
    assert outcome.max_in_flight == 3
    assert outcome.start_ns == min(r.intended_send_ns for r in measured)
    assert outcome.end_ns == max(r.end_ns for r in measured)
    assert all(r.ok and r.output_tokens == 4 for r in records)
    assert [r.prompt_chars for r in records] == [len(PROMPTS[r.request_index % 8].text) for r in records]


def test_in_a_closed_loop_a_request_is_intended_when_its_worker_became_free(streamer):
    _, records = _run(
        _target(streamer, "parallel/3/5"), "concurrency", 2, _sweep(ConcurrencyLoad(values=(2,)))
    )
    measured = sorted((r for r in records if not r.warmup), key=lambda r: r.intended_send_ns)
    anchor = measured[0].intended_send_ns
    ends = {r.end_ns for r in measured}
    assert measured[1].intended_send_ns == anchor  # both workers start at the anchor
    assert all(r.intended_send_ns in ends for r in measured[2:])
    assert all(r.actual_send_ns >= r.intended_send_ns for r in measured)


def test_a_closed_loop_ramp_up_starts_workers_evenly_over_the_ramp(streamer):
    sweep = _sweep(ConcurrencyLoad(values=(4,), ramp_up_s=0.2), warmup_requests=0, requests_per_point=8)
    _, records = _run(_target(streamer, "parallel/2/100"), "concurrency", 4, sweep)  # each 200 ms long
    intended = {r.intended_send_ns for r in records}
    anchor = min(intended)
    assert {anchor + k * 50_000_000 for k in range(4)} <= intended
    ends = {r.end_ns for r in records}
    assert all(t in ends for t in intended - {anchor + k * 50_000_000 for k in range(4)})


def test_an_open_loop_sends_on_the_precomputed_schedule_and_never_early(streamer):
    sweep = _sweep(RateLoad(kind="poisson", values=(40.0,)), requests_per_point=30, seed=5)
    outcome, records = _run(_target(streamer, "parallel/2/5"), "poisson", 40.0, sweep, point_id="open")
    measured = sorted((r for r in records if not r.warmup), key=lambda r: r.request_index)
    expected = arrival_offsets_ns("poisson", 40.0, random.Random("servelab.measure.load:5:open"), count=30)
    assert [r.intended_send_ns - outcome.start_ns for r in measured] == expected
    assert all(r.actual_send_ns >= r.intended_send_ns for r in measured)
    assert outcome.lag_p50_ms <= outcome.lag_p99_ms


def test_an_open_loop_does_not_wait_for_responses_but_max_concurrency_caps_it(streamer):
    free = _sweep(RateLoad(kind="constant", values=(100.0,)), warmup_requests=0, requests_per_point=12)
    outcome, _ = _run(_target(streamer, "parallel/4/50"), "constant", 100.0, free)
    assert outcome.max_in_flight >= 4  # 10 ms apart, each 200 ms long
    capped = _sweep(
        RateLoad(kind="constant", values=(100.0,), max_concurrency=2),
        warmup_requests=0,
        requests_per_point=12,
    )
    outcome, records = _run(_target(streamer, "parallel/4/50"), "constant", 100.0, capped)
    assert outcome.max_in_flight == 2
    assert len(records) == 12


def test_a_duration_run_sends_nothing_after_its_end(streamer):
    sweep = _sweep(ConcurrencyLoad(values=(2,)), requests_per_point=None, duration_s=0.4, warmup_requests=1)
    outcome, records = _run(_target(streamer, "parallel/2/10"), "concurrency", 2, sweep)
    measured = [r for r in records if not r.warmup]
    assert len(measured) >= 2
    assert all(r.intended_send_ns < outcome.start_ns + 400_000_000 for r in measured)


def test_failed_requests_are_counted_not_raised():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = Target("dep", "fake", "model", "model", f"http://127.0.0.1:{port}", "openai")
    outcome, records = _run(target, "concurrency", 2, _sweep(ConcurrencyLoad(values=(2,))))
    assert (outcome.requests, outcome.errors) == (10, 10)
    assert {r.error_class for r in records} == {"connect"}


def test_schedule_kept_compares_the_p99_lag_with_the_limit(streamer):
    sweep = _sweep(ConcurrencyLoad(values=(1,)), requests_per_point=4, warmup_requests=0)
    kept, _ = _run(_target(streamer, "parallel/1/1"), "concurrency", 1, sweep, lag_limit_ms=1e9)
    broken, _ = _run(_target(streamer, "parallel/1/1"), "concurrency", 1, sweep, lag_limit_ms=-1.0)
    assert kept.schedule_kept and kept.lag_limit_ms == 1e9
    assert not broken.schedule_kept and broken.lag_p99_ms >= 0


def test_a_failing_on_record_stops_the_point_with_its_error(streamer):
    def refuse(record: RequestRecord) -> None:
        raise OSError("disk full")

    async def go():
        async with make_client(4) as client:
            await run_point(
                client,
                _target(streamer, "parallel/2/5"),
                PROMPTS,
                RateLoad(kind="poisson", values=(50.0,)),
                50.0,
                _sweep(RateLoad(kind="poisson", values=(50.0,)), warmup_requests=0),
                "pt",
                refuse,
            )

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(go())


def test_a_point_needs_prompts():
    with pytest.raises(ValueError, match="no prompts"):
        asyncio.run(
            run_point(None, None, [], ConcurrencyLoad(values=(1,)), 1, _sweep(ConcurrencyLoad(values=(1,))), "pt", print)
        )  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ max throughput
def _search(target: Target, prompts: list[Prompt] = PROMPTS, **kwargs):
    sweep = _sweep(ConcurrencyLoad(values=(1,)), requests_per_point=6, warmup_requests=0)
    seen: list[RequestRecord] = []

    async def go():
        async with make_client(16) as client:
            return await find_max_throughput(client, target, prompts, sweep, seen.append, **kwargs)

    return asyncio.run(go()), seen


def test_the_search_stops_where_more_concurrency_stops_paying(streamer):
    # A server that handles one request at a time: doubling concurrency cannot raise throughput much.
    search, seen = _search(_target(streamer, "serial/3/10"), max_value=16, min_gain=0.5)
    assert search.stop_reason == "gain_below_min"
    assert [s.load_value for s in search.steps] == [1, 2]
    assert search.knee is search.steps[0]
    assert len(seen) == 12
    assert search.steps[1].gain is not None and search.steps[1].gain < 0.5


def test_the_search_stops_when_the_slo_breaks_and_has_no_knee_if_none_met_it(streamer):
    search, _ = _search(_target(streamer, "parallel/3/10"), max_value=16, slo=Slo(e2e_ms=1.0))
    assert search.stop_reason == "slo_broken"
    assert len(search.steps) == 1 and search.knee is None
    assert search.steps[0].slo_values_ms["e2e"] > 1.0


def test_the_search_ends_at_max_value_while_every_step_pays(streamer):
    search, _ = _search(_target(streamer, "parallel/2/5"), max_value=4, min_gain=-math.inf)
    assert search.stop_reason == "max_value"
    assert [s.load_value for s in search.steps] == [1, 2, 4]
    assert search.knee is search.steps[-1]
    assert all(s.output_tokens_per_s > 0 for s in search.steps)


def test_search_steps_send_different_prompts(streamer):
    prompts = [Prompt("x" * n, "en", n) for n in range(1, 65)]  # a prompt's length names it
    search, seen = _search(_target(streamer, "parallel/1/1"), prompts, max_value=4, min_gain=-math.inf)
    used = [{r.prompt_chars for r in seen if r.point_id == f"search-concurrency-{v}"} for v in (1, 2, 4)]
    assert [len(u) for u in used] == [6, 6, 6]
    assert not (used[0] & used[1] or used[1] & used[2] or used[0] & used[2])
