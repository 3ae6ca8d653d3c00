"""The memory sampler's host fallback against the real embedded llama-server (SmolLM2-135M on the CPU)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import embedded_params
from servelab.observe import MemorySampler, PidMap, idle_footprint, load_events, read_samples
from servelab.params import parse_params
from servelab.records import GPU_FILE, HOST_MEMORY_FILE
from servelab.serve.deploy import deploy
from servelab.serve.engines.llamacpp import embedded_gguf
from servelab.serve.planner import predict

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh embedded server of this module's own: the idle footprint must not carry other tests' KV pages."""
    fleet = deploy(embedded_params(parallel_slots=2), tmp_path_factory.mktemp("memory-server"))
    try:
        yield fleet["smollm2"]
    finally:
        fleet.close()


def _deployment_name(server: Any) -> str:
    return str(getattr(server, "deployment", None) or server.name)


def _flag(argv: list[str], flag: str) -> int:
    return int(argv[argv.index(flag) + 1])


def _complete(server: Any, prompt: str) -> None:
    response = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": server.served_model, "prompt": prompt, "max_tokens": 16},
        timeout=120,
    )
    assert response.status_code == 200


@pytest.fixture(scope="module")
def sampled(server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[MemorySampler, Path]:
    """Sample the running server at 50 Hz while it answers a few requests."""
    run_dir = tmp_path_factory.mktemp("memory-run")
    pid_map = PidMap()
    pid_map.add(_deployment_name(server), server.pid)
    with MemorySampler(run_dir, sample_hz=50, attribution=pid_map, mode="host_rss") as sampler:
        deadline = time.monotonic() + 60
        while sampler.rows_written == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        for prompt in ("Once upon a time", "The capital of France is", "def fibonacci(n):"):
            _complete(server, prompt)
        ticks = sampler.ticks
        while sampler.ticks < ticks + 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    return sampler, run_dir


def test_host_fallback_writes_only_labelled_host_rss(sampled: tuple[MemorySampler, Path]) -> None:
    sampler, run_dir = sampled
    assert sampler.path == run_dir / HOST_MEMORY_FILE and not (run_dir / GPU_FILE).exists()
    samples = read_samples(sampler.path)
    assert len(samples) == sampler.rows_written > 0
    assert set(samples["source"]) == {"host_rss"}
    assert sampler.failures == 0


def test_the_server_process_is_attributed_and_holds_at_least_its_weights(sampled: tuple[MemorySampler, Path], server: Any) -> None:
    samples = read_samples(sampled[0].path)
    mine = samples[samples["pid"] == server.pid]
    assert not mine.empty and set(mine["deployment"]) == {_deployment_name(server)}
    gguf_mib = embedded_gguf().stat().st_size / 2**20
    assert mine["used_mib"].min() >= gguf_mib  # llama.cpp warms up at start: every mapped weight page is resident


def test_the_last_sample_matches_the_process_rss_now(sampled: tuple[MemorySampler, Path], server: Any) -> None:
    samples = read_samples(sampled[0].path)
    last = samples[samples["pid"] == server.pid]["used_mib"].iloc[-1]
    assert last == pytest.approx(psutil.Process(server.pid).memory_info().rss / 2**20, rel=0.10)


def test_the_planner_predicts_the_idle_host_footprint_within_10_percent(sampled: tuple[MemorySampler, Path], server: Any) -> None:
    samples = read_samples(sampled[0].path)
    idle = idle_footprint(samples).set_index("deployment").loc[_deployment_name(server), "idle_mib"]
    deployment = parse_params({
        "name": "check",
        "deployments": [{"name": "cpu", "model": "smollm2", "engine": {
            "kind": "llamacpp", "ctx_size": _flag(server.argv, "--ctx-size"), "parallel_slots": _flag(server.argv, "--parallel")}}],
        "sweep": {"load": [{"kind": "concurrency", "values": [1]}]},
    }).deployments[0]
    footprint = predict(deployment, total_mib=0)
    assert footprint.memory == "host"
    assert footprint.predicted_mib == pytest.approx(idle, rel=0.10)


def test_a_server_running_before_sampling_began_is_present_not_loaded(sampled: tuple[MemorySampler, Path], server: Any) -> None:
    events = load_events(read_samples(sampled[0].path))
    mine = events[events["pid"] == server.pid]
    assert mine["event"].tolist() == ["present"]
