"""A load point over several client processes (servelab.measure.workers): how streams, requests and the one
arrival schedule are dealt, how many processes 'auto' picks, the one clock across processes, and real points and a
real sweep against the reference emitter (tools/emitter) whose records merge exactly."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest
from servelab.aio import run_sync
from servelab.checks.calibrate import running_emitter
from servelab.clock import now_ns
from servelab.measure.clients import Target, make_client
from servelab.measure.load import arrival_offsets_ns
from servelab.measure.prompts import Prompt
from servelab.measure.sweep import run_sweep
from servelab.measure.workers import (
    PARTS_DIR,
    ClientCeiling,
    PointWindow,
    Share,
    deal_schedule,
    dealt,
    drive_point,
    plan_shares,
    processes_for,
    run_point_in_processes,
)
from servelab.params import ConcurrencyLoad, Params, RateLoad, Sweep, parse_params
from servelab.records import REQUESTS_FILE, latest_points, read_jsonl, read_requests
from servelab.serve.deploy import Fleet, RunningServer

PROMPTS = [Prompt(f"split the point, prompt {i}", "en", 6) for i in range(40)]
CEILING = ClientCeiling(max_chunks_s=40_000.0, max_req_s=600.0, ceiling_concurrency=256)
CLOSED = ConcurrencyLoad(values=(1,))
POISSON = RateLoad(kind="poisson", values=(1.0,))
CONSTANT = RateLoad(kind="constant", values=(1.0,))


# ------------------------------------------------------------------------------------------ dealing
@pytest.mark.parametrize(("total", "parts"), [(0, 3), (5, 3), (64, 8), (7, 1), (3, 4)])
def test_dealt_shares_add_up_and_differ_by_at_most_one(total: int, parts: int) -> None:
    shares = dealt(total, parts)
    assert sum(shares) == total and max(shares) - min(shares) <= 1


@pytest.mark.parametrize(("processes", "warmups", "requests"), [(1, 2, 10), (3, 2, 10), (4, 0, 9), (8, 5, 3)])
def test_global_request_indices_cover_the_point_once(processes: int, warmups: int, requests: int) -> None:
    sweep = Sweep(load=(ConcurrencyLoad(values=(16,)),), requests_per_point=requests, warmup_requests=warmups)
    shares = plan_shares(processes, sweep.load[0], 16, sweep, "p", cpus=[0, 1])
    indices = [s.global_index(i) for s in shares for i in range(s.warmup + (s.requests or 0))]
    assert sorted(indices) == list(range(warmups + requests))
    warm = [s.global_index(i) for s in shares for i in range(s.warmup)]
    assert sorted(warm) == list(range(warmups))  # warm-ups come first, as in one process
    assert sum(s.streams for s in shares) == 16
    assert [s.cpu for s in shares] == [k % 2 for k in range(processes)]


def test_the_one_arrival_schedule_is_dealt_round_robin_so_the_rate_is_that_of_one_process() -> None:
    load = RateLoad(kind="poisson", values=(250.0,), max_concurrency=10)
    sweep = Sweep(load=(load,), requests_per_point=101, warmup_requests=0, seed=7)
    shares = plan_shares(3, load, 250.0, sweep, "p/en/poisson-250", cpus=[0])
    one = arrival_offsets_ns("poisson", 250.0, random.Random("servelab.measure.load:7:p/en/poisson-250"), count=101)
    assert sorted(o for s in shares for o in (s.offsets or [])) == one
    assert [s.offsets for s in shares] == deal_schedule(one, 3)
    assert sum(s.streams for s in shares) == 10  # max_concurrency dealt too


def test_a_share_index_maps_local_to_global() -> None:
    share = Share(worker=1, workers=3, cpu=0, warmup=1, total_warmup=2, requests=4, streams=2)
    assert [share.global_index(i) for i in range(5)] == [1, 3, 6, 9, 12]


# ------------------------------------------------------------------------------------------ how many
def test_a_count_of_processes_is_kept_but_never_above_the_streams() -> None:
    assert processes_for(4, CLOSED, 64, 64, None, cores=2) == 4
    assert processes_for(4, CLOSED, 2, 64, None, cores=16) == 2
    assert processes_for(4, POISSON, 1.0, 64, None, cores=16) == 4


def test_auto_keeps_each_process_within_70_percent_of_the_calibrated_ceiling() -> None:
    # 256 streams per core held; 70 % of it is 179.2: 512 streams need 3 processes.
    assert processes_for("auto", CLOSED, 512, 64, CEILING, cores=16) == 3
    # 1,000 req/s x 64 chunks = 64,000 chunks/s against 0.7 x 40,000 = 28,000 a core: 3; req/s: 1000 / 420: 3.
    assert processes_for("auto", CONSTANT, 1000.0, 64, CEILING, cores=16) == 3
    assert processes_for("auto", CONSTANT, 10.0, 64, CEILING, cores=16) == 1
    assert processes_for("auto", CLOSED, 100_000, 64, CEILING, cores=8) == 8  # one per core at most
    assert processes_for("auto", CLOSED, 512, 64, None, cores=16) == 1  # no calibration: one process


def test_the_ceiling_comes_from_a_calibration_as_the_manifest_stores_it() -> None:
    ceiling = ClientCeiling.from_calibration({"max_chunks_s": 48_886.0, "max_req_s": 764.0, "ceiling_concurrency": 256})
    assert ceiling == ClientCeiling(48_886.0, 764.0, 256)
    assert ClientCeiling.from_calibration(None) is None
    assert ClientCeiling.from_calibration({"max_chunks_s": 0, "max_req_s": 0}) is None


# ------------------------------------------------------------------------------------------ one clock
def _stamp(queue: multiprocessing.Queue) -> None:
    queue.put(now_ns())


def test_the_run_clock_is_one_clock_for_every_process_of_the_host() -> None:
    """CLOCK_MONOTONIC is system-wide on Linux: a stamp taken in another process falls between the parent's."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    before = now_ns()
    process = context.Process(target=_stamp, args=(queue,))
    process.start()
    inside = queue.get(timeout=60)
    process.join(timeout=60)
    after = now_ns()
    assert before < inside < after


# ------------------------------------------------------------------------------------------ against the emitter
@pytest.fixture(scope="module")
def emitter_url() -> str:
    with running_emitter(5.0, 2.0) as emitter:
        yield emitter.base_url


def target(url: str) -> Target:
    return Target("emitter", "emitter", "servelab-emitter", "servelab-emitter", url, "openai")


def assert_merged_exactly(records: list, expected: int) -> None:
    assert len(records) == expected, "every request of every process is there, once"
    assert sorted(r.request_index for r in records) == list(range(expected))
    ends = [r.end_ns for r in records]
    assert ends == sorted(ends), "merged in completion order on the one clock"
    assert all(r.ok for r in records), [r.error_message for r in records if not r.ok][:3]


def test_a_closed_loop_point_over_three_processes_merges_every_record(emitter_url: str, tmp_path: Path) -> None:
    sweep = Sweep(load=(ConcurrencyLoad(values=(6,)),), output_tokens=8, requests_per_point=30, warmup_requests=3)
    records: list = []
    outcome = run_sync(run_point_in_processes(
        3, target(emitter_url), PROMPTS, sweep.load[0], 6, sweep, "emitter/en/concurrency-6", records.append,
        tmp_path / PARTS_DIR, cpus=[0],
    ))  # fmt: skip
    assert_merged_exactly(records, 33)
    assert sum(r.warmup for r in records) == 3 and outcome.warmup_requests == 3
    assert (outcome.requests, outcome.errors) == (30, 0)
    assert all(r.actual_send_ns >= outcome.start_ns for r in records if not r.warmup), "every process starts at the anchor"
    # Each request sends the prompt of its global index, as one process would.
    assert all(r.prompt_chars == len(PROMPTS[r.request_index % len(PROMPTS)].text) for r in records)
    assert not (tmp_path / PARTS_DIR).exists(), "the part files are merged and removed"


def test_an_open_loop_point_over_two_processes_keeps_the_one_schedule(emitter_url: str, tmp_path: Path) -> None:
    load = RateLoad(kind="poisson", values=(200.0,))
    sweep = Sweep(load=(load,), output_tokens=8, requests_per_point=40, warmup_requests=2, seed=3)
    point_id = "emitter/en/poisson-200"
    records: list = []
    outcome = run_sync(run_point_in_processes(
        2, target(emitter_url), PROMPTS, load, 200.0, sweep, point_id, records.append, tmp_path / PARTS_DIR,
    ))  # fmt: skip
    assert_merged_exactly(records, 42)
    measured = sorted((r for r in records if not r.warmup), key=lambda r: r.request_index)
    schedule = arrival_offsets_ns("poisson", 200.0, random.Random(f"servelab.measure.load:3:{point_id}"), count=40)
    # Request W + i left (was meant to leave) at the i-th arrival of the one schedule, from the one anchor.
    assert [r.intended_send_ns - outcome.start_ns for r in measured] == schedule


def fleet_of_the_emitter(run_dir: Path, url: str) -> Fleet:
    """The emitter as the one server of a fleet (a process we started ourselves; closing the fleet stops nothing)."""
    server = RunningServer(
        name="emitter", framework="vllm", model="servelab-emitter", served_model="servelab-emitter",
        api_flavour="openai", base_url=url, port=int(url.rsplit(":", 1)[1]), pid=0, log_path=str(run_dir / "emitter.log"),
        argv=[], launched_ns=now_ns(), ready_ns=now_ns(), model_path="",
    )  # fmt: skip
    return Fleet(run_dir=run_dir, servers={"emitter": server}, owned=False)


def test_a_sweep_with_two_client_processes_writes_one_requests_file(emitter_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params: Params = parse_params({
        "name": "two-clients",
        "deployments": [{"name": "emitter", "model": "servelab-emitter", "engine": {"kind": "vllm"}}],
        "sweep": {"load": [{"kind": "concurrency", "values": [4]}, {"kind": "constant", "values": [100]}],
                  "requests_per_point": 20, "warmup_requests": 2, "output_tokens": 8, "client_processes": 2},
    })  # fmt: skip
    fleet = fleet_of_the_emitter(tmp_path, emitter_url)
    monkeypatch.setattr(fleet, "dead", lambda: [])  # the emitter is not the fleet's process: nothing to watch
    run_sweep(params, tmp_path, fleet, progress=False)
    points = latest_points(tmp_path)
    assert {p.status for p in points.values()} == {"done"} and len(points) == 2
    records = read_requests(tmp_path)
    for point_id in points:
        assert_merged_exactly([r for r in records if r.point_id == point_id], 22)
    assert len(list(read_jsonl(tmp_path / REQUESTS_FILE))) == 44


def test_an_open_loop_cap_below_the_process_count_uses_fewer_processes_and_holds(emitter_url: str, tmp_path: Path) -> None:
    load = RateLoad(kind="constant", values=(200.0,), max_concurrency=1)
    sweep = Sweep(load=(load,), output_tokens=8, requests_per_point=12, warmup_requests=0)
    records: list = []
    outcome = run_sync(run_point_in_processes(
        3, target(emitter_url), PROMPTS, load, 200.0, sweep, "emitter/en/constant-200", records.append,
        tmp_path / PARTS_DIR,
    ))  # fmt: skip
    assert_merged_exactly(records, 12)
    assert outcome.max_in_flight == 1, "one request in flight at most, as max_concurrency says"


@pytest.mark.parametrize("processes", [1, 2])
def test_a_point_window_brackets_every_request_in_one_process_and_in_several(emitter_url: str, tmp_path: Path, processes: int) -> None:
    sweep = Sweep(load=(ConcurrencyLoad(values=(4,)),), output_tokens=8, requests_per_point=12, warmup_requests=2,
                  client_processes=processes)
    events: list[tuple[str, int]] = []
    window = PointWindow(on_start=lambda: events.append(("start", now_ns())), on_end=lambda: events.append(("end", now_ns())))

    async def go() -> None:
        async with make_client(4) as client:
            await drive_point(client, target(emitter_url), PROMPTS, sweep.load[0], 4, sweep, "emitter/en/concurrency-4",
                              lambda record: events.append(("record", record)), parts_dir=tmp_path / PARTS_DIR, window=window)

    run_sync(go())
    kinds = [kind for kind, _ in events]
    assert kinds.count("start") == 1 and kinds.count("end") == 1 and kinds.count("record") == 14
    start, end = (stamp for kind, stamp in events if kind in ("start", "end"))
    records = [record for kind, record in events if kind == "record"]
    measured = [r for r in records if not r.warmup]
    assert all(start < r.actual_send_ns and r.end_ns < end for r in measured), "the window holds every measured request"
    assert all(r.end_ns < start for r in records if r.warmup), "warm-ups end before the window opens"
    if processes > 1:
        assert kinds.index("end") < kinds.index("record"), "the window closes before the processes' records are merged"
