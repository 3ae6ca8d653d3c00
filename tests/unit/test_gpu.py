"""servelab.observe: the sampler (host fallback for real, NVML through a stand-in for the pynvml library), attribution
on real process trees, and the analysis and energy functions on samples built by hand."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pynvml
import pytest
from servelab.clock import now_ns
from servelab.observe import (
    DEVICE,
    NO_PROCESS,
    UNATTRIBUTED,
    MemorySampler,
    NvmlReader,
    PidMap,
    attribution_gap,
    baseline_used_mib,
    deployment_memory,
    energy_per_deployment,
    free_device_mib,
    idle_footprint,
    load_events,
    memory_under_load,
    next_tick,
    nvml_available,
    ollama_cross_check,
    ollama_vram_mib,
    peaks,
    pids_from_docker_top,
    read_samples,
    timeline,
)
from servelab.records import GPU_FILE, HOST_MEMORY_FILE, MEMORY_COLUMNS, MemorySample

GIB = 1024**3
S = 1_000_000_000

# ----------------------------------------------------------------------------------------------- real process trees
TREE = r"""
import subprocess, sys, time
code = "import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print(g.pid, flush=True); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
for line in sys.stdin:
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(late.pid, flush=True)
"""


@dataclasses.dataclass
class Tree:
    process: subprocess.Popen[str]
    child: int
    grandchild: int

    @property
    def root(self) -> int:
        return self.process.pid

    def spawn_child(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("spawn\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())


@pytest.fixture
def tree() -> Iterator[Tree]:
    """A real root -> child -> grandchild tree (like vLLM's API server -> engine core), in its own session."""
    process = subprocess.Popen(
        [sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    child, grandchild = (int(x) for x in process.stdout.readline().split())
    try:
        yield Tree(process, child, grandchild)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdin.close()  # type: ignore[union-attr]
        process.stdout.close()


def wait_for(condition, what: str, deadline_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------------- schedule
def test_next_tick_keeps_the_next_tick_when_on_time() -> None:
    assert next_tick(start_ns=0, period_ns=100, last_index=3, now=350) == (4, 0)


def test_next_tick_skips_ticks_whose_time_has_passed_instead_of_bursting() -> None:
    assert next_tick(start_ns=0, period_ns=100, last_index=3, now=730) == (8, 4)


def test_next_tick_due_exactly_now_is_kept() -> None:
    assert next_tick(start_ns=1_000, period_ns=100, last_index=0, now=1_100) == (1, 0)


# ----------------------------------------------------------------------------------------------- attribution
def test_pid_map_resolves_root_and_every_descendant(tree: Tree) -> None:
    pid_map = PidMap()
    pid_map.add("vllm-a", tree.root)
    owners = pid_map.resolve()
    assert {tree.root, tree.child, tree.grandchild} <= set(owners)
    assert {owners[p] for p in (tree.root, tree.child, tree.grandchild)} == {"vllm-a"}
    assert os.getpid() not in owners


def test_pid_map_finds_a_child_spawned_after_add(tree: Tree) -> None:
    pid_map = PidMap()
    pid_map.add("ollama", tree.root)
    before = pid_map.resolve()
    late = tree.spawn_child()
    assert late not in before
    assert pid_map.resolve()[late] == "ollama"


def test_pid_map_keeps_deployments_apart_and_drops_a_dead_tree(tree: Tree) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        pid_map = PidMap()
        pid_map.add("a", tree.root)
        pid_map.add("b", other.pid)
        owners = pid_map.resolve()
        assert owners[other.pid] == "b" and owners[tree.child] == "a"
    finally:
        other.kill()
        other.wait()
    assert other.pid not in pid_map.resolve()


def test_pid_map_counts_changes_so_a_sampler_resolves_at_once() -> None:
    pid_map = PidMap()
    first = pid_map.generation
    pid_map.add("a", os.getpid())
    pid_map.remove("a")
    assert pid_map.generation == first + 2
    assert pid_map.resolve() == {}


def test_docker_top_output_gives_its_pids() -> None:
    output = "PID\n4242\n4300\n\n  4301\n"
    assert pids_from_docker_top(output) == [4242, 4300, 4301]


def test_ollama_cross_check_sums_size_vram_against_measured() -> None:
    ps = {
        "models": [
            {"name": "qwen2.5:3b", "model": "qwen2.5:3b", "size": 3 * GIB, "size_vram": 2 * GIB},
            {"name": "tinyllama:1.1b", "model": "tinyllama:1.1b", "size": GIB, "size_vram": GIB // 2},
        ]
    }
    assert ollama_vram_mib(ps) == {"qwen2.5:3b": 2048.0, "tinyllama:1.1b": 512.0}
    check = ollama_cross_check(ps, measured_mib=3000.0)
    assert check.reported_mib == 2560.0
    assert check.difference_mib == 440.0
    assert check.models == ("qwen2.5:3b", "tinyllama:1.1b")
    assert ollama_cross_check({"models": []}, 10.0).ratio is None


# ----------------------------------------------------------------------------------------------- host fallback
def test_host_sampler_writes_labelled_host_rss_of_the_whole_tree(tmp_path: Path, tree: Tree) -> None:
    pid_map = PidMap()
    pid_map.add("llamacpp", tree.root)
    with MemorySampler(tmp_path, sample_hz=50, attribution=pid_map, mode="host_rss", refresh_every_s=0.05) as sampler:
        assert sampler.mode == "host_rss" and sampler.path == tmp_path / HOST_MEMORY_FILE
        late = tree.spawn_child()
        wait_for(lambda: sampler.rows_written > 0 and late in set(read_samples(sampler.path)["pid"].dropna()), "the late child")
    assert not (tmp_path / GPU_FILE).exists()
    samples = read_samples(tmp_path / HOST_MEMORY_FILE)
    assert set(samples["source"]) == {"host_rss"}
    processes = samples[samples["scope"] == "process"]
    assert {tree.root, tree.child, tree.grandchild, late} <= set(processes["pid"].dropna().astype(int))
    assert set(processes["deployment"].dropna()) == {"llamacpp"}
    # In MiB: every process holds more than 1 at its largest (a child listed right after its exec may hold less).
    assert (processes.groupby("pid")["used_mib"].max() > 1).all()
    host = samples[samples["scope"] == "device"]
    assert host["device_index"].isna().all()
    assert (host["total_mib"] == psutil.virtual_memory().total / 2**20).all()
    assert sampler.failures == 0 and len(samples) == sampler.rows_written


def test_sampler_at_200_hz_stamps_rows_on_the_run_clock_in_order(tmp_path: Path) -> None:
    pid_map = PidMap()
    pid_map.add("self", os.getpid())
    started = now_ns()
    with MemorySampler(tmp_path, sample_hz=200, attribution=pid_map, mode="host_rss") as sampler:
        wait_for(lambda: sampler.ticks >= 100, "100 ticks")
    stopped = now_ns()
    samples = read_samples(sampler.path)
    device = samples[samples["scope"] == "device"]
    assert sampler.process_every == 20  # 200 Hz device readings, process listings at the default 10 Hz
    assert len(device) == sampler.ticks
    assert device["t_ns"].is_monotonic_increasing and device["t_ns"].is_unique
    assert started <= samples["t_ns"].min() and samples["t_ns"].max() <= stopped
    listings = samples.loc[samples["scope"] == "process", "t_ns"].nunique()
    assert 0 < listings < len(device)
    assert sampler.failures == 0 and not sampler.running


def test_an_empty_process_listing_is_written_as_a_row_without_pid(tmp_path: Path) -> None:
    with MemorySampler(tmp_path, sample_hz=50, mode="host_rss") as sampler:
        wait_for(lambda: sampler.ticks >= 3, "3 ticks")
    samples = read_samples(sampler.path)
    processes = samples[samples["scope"] == "process"]
    assert len(processes) > 0 and processes["pid"].isna().all()
    assert deployment_memory(samples).empty


def test_stop_is_safe_twice_and_without_start(tmp_path: Path) -> None:
    sampler = MemorySampler(tmp_path, sample_hz=20, mode="host_rss")
    sampler.stop()
    sampler.start()
    sampler.stop()
    sampler.stop()
    assert sampler.failures == 0


# ----------------------------------------------------------------------------------------------- NVML
class StandInNvml:
    """Stands in for the pynvml module (a third-party library) with one GPU; raises real pynvml.NVMLErrors."""

    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, gpu_pids: dict[int, int], lost_after_reads: int | None = None, init_error: int | None = None) -> None:
        self.gpu_pids = gpu_pids
        self.lost_after_reads = lost_after_reads
        self.init_error = init_error
        self.reads = 0
        self.energy_mj = 5_000_000
        self.calls = {"energy": 0, "process_utilization": 0}
        self.utilization_samples_left: int | None = None

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        if index != 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return "gpu0"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        self.reads += 1
        if self.lost_after_reads is not None and self.reads > self.lost_after_reads:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        used = 512 * 2**20 + sum(self.gpu_pids.values())
        return SimpleNamespace(total=80 * GIB, used=used, free=80 * GIB - used)

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return 150_500

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        self.calls["energy"] += 1
        self.energy_mj += 7_525
        return self.energy_mj

    def nvmlDeviceGetClockInfo(self, handle: str, kind: int) -> int:
        return 1980 if kind == pynvml.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.gpu_pids.items()]

    def nvmlDeviceGetProcessUtilization(self, handle: str, since_us: int) -> list[SimpleNamespace]:
        self.calls["process_utilization"] += 1
        if self.utilization_samples_left is not None:
            if self.utilization_samples_left == 0:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)  # NVML: no new sample since `since_us`
            self.utilization_samples_left -= 1
        return [SimpleNamespace(pid=pid, timeStamp=since_us + 1, smUtil=40 + i) for i, pid in enumerate(self.gpu_pids)]


def test_nvml_sampler_converts_units_and_attributes_the_engine_child(tmp_path: Path, tree: Tree) -> None:
    library = StandInNvml({tree.grandchild: 12_598 * 2**20, 1: 100 * 2**20})
    pid_map = PidMap()
    pid_map.add("tinyllama", tree.root)
    with MemorySampler(tmp_path, sample_hz=100, attribution=pid_map, nvml_library=library) as sampler:
        assert sampler.mode == "nvml"
        wait_for(lambda: sampler.ticks >= 10, "10 ticks")
    samples = read_samples(tmp_path / GPU_FILE)
    assert not (tmp_path / HOST_MEMORY_FILE).exists()
    device = samples[samples["scope"] == "device"].iloc[0]
    assert (device["source"], device["device_index"]) == ("nvml", 0)
    assert device["total_mib"] == 80 * 1024 and device["used_mib"] == 512 + 12_598 + 100
    assert (device["power_w"], device["utilization_pct"], device["sm_clock_mhz"], device["mem_clock_mhz"]) == (150.5, 37, 1980, 2619)
    assert pd.isna(device["temperature_c"])
    assert samples.loc[samples["scope"] == "device", "energy_mj"].dropna().is_monotonic_increasing
    engine = samples[samples["pid"] == tree.grandchild]
    assert set(engine["deployment"]) == {"tinyllama"} and set(engine["used_mib"]) == {12_598}
    assert set(engine["utilization_pct"]) == {40}
    assert samples.loc[samples["pid"] == 1, "deployment"].isna().all()
    assert sampler.failures == 0


def test_slow_nvml_calls_are_read_at_their_own_lower_rate(tmp_path: Path) -> None:
    library = StandInNvml({7: GIB})
    with MemorySampler(tmp_path, sample_hz=200, nvml_library=library, energy_every_s=3600, utilization_every_s=3600, detail_hz=10) as sampler:
        wait_for(lambda: sampler.ticks >= 60, "60 ticks")
    device = read_samples(tmp_path / GPU_FILE).query("scope == 'device'")
    assert len(device) >= 60 and device["used_mib"].notna().all() and device["energy_mj"].notna().sum() == 1
    assert library.calls == {"energy": 1, "process_utilization": 1}
    # Power, utilization, clocks: about one tick in 20 at 200 Hz with details at 10 Hz, and always together.
    details = device[["power_w", "utilization_pct", "sm_clock_mhz", "mem_clock_mhz"]].notna()
    assert (details.all(axis=1) == details.any(axis=1)).all()
    assert 1 <= details["power_w"].sum() <= len(device) // 20 + 2


def test_a_process_keeps_its_last_utilization_for_the_hold_time_then_reads_zero() -> None:
    library = StandInNvml({7: GIB})
    library.utilization_samples_left = 1
    reader = NvmlReader(0, library, energy_every_s=0.1, utilization_every_s=0.0, utilization_hold_s=1.0)
    assert [r.utilization_pct for r in reader.processes(0)] == [40]
    assert [r.utilization_pct for r in reader.processes(S // 2)] == [40]
    assert [r.utilization_pct for r in reader.processes(3 * S // 2)] == [0.0]
    assert [reader.device(t).energy_mj is not None for t in (0, S // 20, S // 10)] == [True, False, True]
    detailed = NvmlReader(0, library, detail_every_s=0.1)
    assert [detailed.device(t).power_w is not None for t in (0, S // 20, S // 10)] == [True, False, True]


def test_nvml_lost_mid_run_is_counted_and_the_sampler_falls_back_to_host(tmp_path: Path) -> None:
    library = StandInNvml({}, lost_after_reads=5)
    sampler = MemorySampler(tmp_path, sample_hz=100, nvml_library=library, fallback_after_s=0.0)
    with sampler:
        wait_for(lambda: sampler.fell_back, "the fallback")
        wait_for(lambda: sampler.rows_written > 0 and (tmp_path / HOST_MEMORY_FILE).stat().st_size > 0, "host rows")
        assert sampler.running
    assert sampler.mode == "host_rss" and sampler.paths == [tmp_path / GPU_FILE, tmp_path / HOST_MEMORY_FILE]
    assert sampler.failures >= 2 and "GPU is lost" in (sampler.failure_messages[0])
    assert set(read_samples(tmp_path / GPU_FILE)["source"]) == {"nvml"}
    assert set(read_samples(tmp_path / HOST_MEMORY_FILE)["source"]) == {"host_rss"}
    assert sampler.stats()["fell_back"] is True


def test_asking_for_nvml_without_it_records_why_and_samples_the_host(tmp_path: Path) -> None:
    library = StandInNvml({}, init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with MemorySampler(tmp_path, sample_hz=50, mode="nvml", nvml_library=library) as sampler:
        wait_for(lambda: sampler.ticks >= 2, "2 ticks")
    assert sampler.mode == "host_rss" and sampler.fell_back
    assert "NVML could not be opened" in (sampler.last_failure or "")
    assert set(read_samples(tmp_path / HOST_MEMORY_FILE)["source"]) == {"host_rss"}


def test_nvml_availability_and_free_memory_never_raise() -> None:
    missing = StandInNvml({}, init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    assert nvml_available(missing) is False and free_device_mib(0, missing) is None
    present = StandInNvml({7: GIB})
    assert nvml_available(present) is True
    free = free_device_mib(0, present)
    assert free is not None and (free.total_mib, free.used_mib) == (80 * 1024, 512 + 1024)
    assert free_device_mib(3, present) is None


def test_auto_mode_matches_what_this_machine_has(tmp_path: Path) -> None:
    sampler = MemorySampler(tmp_path, sample_hz=20)
    assert sampler.mode == ("nvml" if nvml_available() else "host_rss")


# ----------------------------------------------------------------------------------------------- analysis
def frame(samples: list[MemorySample]) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(s) for s in samples])


def device_row(t_s: float, used: float, **fields: float) -> MemorySample:
    return MemorySample(t_ns=int(t_s * S), source="nvml", scope="device", device_index=0, used_mib=used, total_mib=81_559, **fields)


def process_row(t_s: float, pid: int | None = None, deployment: str | None = None, used: float | None = 0.0,
                utilization: float | None = None) -> MemorySample:
    return MemorySample(t_ns=int(t_s * S), source="nvml", scope="process", device_index=0, pid=pid, deployment=deployment,
                        used_mib=used, utilization_pct=utilization)


@pytest.fixture
def run() -> pd.DataFrame:
    """Baseline 500 MiB; vllm 'a' loads at 2 s; Ollama 'b' loads at 4 s, unloads at 7 s, reloads (new runner) at 8 s."""
    used = [500, 500, 1500, 1510, 3500, 3600, 3520, 1510, 3490]
    listing = {
        0: [], 1: [],
        2: [(10, "a", 1000)], 3: [(10, "a", 1010)],
        4: [(10, "a", 1010), (20, "b", 1990)],
        5: [(10, "a", 1100), (20, "b", 2000)],
        6: [(10, "a", 1010), (20, "b", 2000), (99, None, 10)],
        7: [(10, "a", 1010)],
        8: [(10, "a", 1000), (21, "b", 1990)],
    }
    rows = []
    for t, device_used in enumerate(used):
        rows.append(device_row(t, device_used))
        rows += [process_row(t, pid, name, mib) for pid, name, mib in listing[t]] or [process_row(t)]
    return frame(rows)


@pytest.fixture
def points() -> pd.DataFrame:
    return pd.DataFrame({"point_id": ["p1", "aborted"], "start_ns": [int(4.5 * S), int(7.5 * S)], "end_ns": [int(5.5 * S), None]})


def test_deployment_memory_is_zero_where_a_deployment_has_no_process(run: pd.DataFrame) -> None:
    memory = deployment_memory(run).set_index(["t_ns", "deployment"])["used_mib"]
    assert memory[(0, "a")] == 0 and memory[(2 * S, "a")] == 1000
    assert memory[(7 * S, "b")] == 0 and memory[(8 * S, "b")] == 1990
    assert memory[(6 * S, UNATTRIBUTED)] == 10


def test_baseline_is_the_device_before_any_deployment_holds_memory(run: pd.DataFrame) -> None:
    assert baseline_used_mib(run) == 500
    assert baseline_used_mib(run, before_ns=5 * S) == 1500
    assert pd.isna(baseline_used_mib(run, before_ns=0))


def test_attribution_gap_counts_every_listed_process_and_shows_unattributed_apart(run: pd.DataFrame) -> None:
    gap = attribution_gap(run).set_index("t_ns")
    assert gap.loc[5 * S, "gap_mib"] == 0
    assert gap.loc[3 * S, "gap_mib"] == 0
    assert (gap.loc[6 * S, "gap_mib"], gap.loc[6 * S, "unattributed_mib"], gap.loc[6 * S, "listed_mib"]) == (0, 10, 3020)
    assert gap.loc[6 * S, "gap_pct"] == 0
    assert pd.isna(gap.loc[0, "gap_pct"])


def test_attribution_gap_is_what_no_listed_process_accounts_for(run: pd.DataFrame) -> None:
    gap = attribution_gap(run, baseline_mib=400).set_index("t_ns")
    assert gap.loc[6 * S, "gap_mib"] == 100
    assert gap.loc[6 * S, "gap_pct"] == pytest.approx(100 * 100 / 3120)


def test_baseline_ends_when_a_process_not_there_at_the_start_takes_memory_attributed_or_not() -> None:
    def row(t: float, scope: str, used: float, pid: float | None = None, deployment: str | None = None) -> dict:
        return {"t_ns": int(t * S), "source": "nvml", "scope": scope, "pid": pid, "deployment": deployment, "used_mib": used}

    samples = pd.DataFrame(
        [row(0, "device", 600), row(0, "process", 100, pid=7.0), row(1, "device", 600), row(1, "process", 100, pid=7.0),
         # pid 9 boots unattributed (its deployment is not known yet), then is attributed
         row(2, "device", 20_700), row(2, "process", 100, pid=7.0), row(2, "process", 20_000, pid=9.0),
         row(3, "device", 20_700), row(3, "process", 100, pid=7.0), row(3, "process", 20_000, pid=9.0, deployment="a")]
    ).reindex(columns=MEMORY_COLUMNS)
    assert baseline_used_mib(samples) == 600


def test_timeline_stacks_deployments_and_the_rest_of_the_device(run: pd.DataFrame) -> None:
    line = timeline(run)
    at5 = line[line["t_ns"] == 5 * S].set_index("deployment")["used_mib"]
    assert at5.to_dict() == {NO_PROCESS: 500, UNATTRIBUTED: 0, "a": 1100, "b": 2000}
    assert line.groupby("t_ns")["used_mib"].sum().loc[6 * S] == 3520
    assert line["t_s"].min() == 0 and line["t_s"].max() == 8


def test_idle_footprint_is_taken_before_any_load_and_leaves_out_unloaded_spans(run: pd.DataFrame, points: pd.DataFrame) -> None:
    idle = idle_footprint(run, points).set_index("deployment")
    # a: 2, 3 and 4 s, before p1 starts at 4.5 s (after it, a host engine's RSS or a GPU engine's working memory
    # may have grown, which is the peak's business)
    assert idle.loc["a", "idle_mib"] == 1010 and idle.loc["a", "max_mib"] == 1010 and idle.loc["a", "samples"] == 3
    assert idle.loc["b", "idle_mib"] == 1990 and idle.loc["b", "samples"] == 1
    assert idle.loc["b", "loaded_ns"] == 4 * S
    assert UNATTRIBUTED not in idle.index
    # Without points: every listing while loaded (b's unloaded span at 7 s left out).
    assert idle_footprint(run).set_index("deployment").loc["b", "samples"] == 4


def test_a_deployment_first_loaded_under_load_is_taken_outside_every_load_point(run: pd.DataFrame) -> None:
    early = pd.DataFrame({"point_id": ["p0", "aborted"], "start_ns": [int(3.5 * S), int(7.5 * S)], "end_ns": [int(5.5 * S), None]})
    idle = idle_footprint(run, early).set_index("deployment")
    assert idle.loc["a", "samples"] == 2  # 2 and 3 s, before p0
    assert idle.loc["b", "idle_mib"] == 2000 and idle.loc["b", "samples"] == 1  # loaded at 4 s, inside p0: 6 s only


def test_memory_under_load_reports_every_deployment_and_the_device(run: pd.DataFrame, points: pd.DataFrame) -> None:
    loaded = memory_under_load(run, points).set_index(["point_id", "deployment"])
    assert loaded.loc[("p1", "a"), "peak_mib"] == 1100 and loaded.loc[("p1", "b"), "mean_mib"] == 2000
    assert loaded.loc[("p1", DEVICE), "peak_mib"] == 3600
    assert "aborted" not in loaded.index.get_level_values("point_id")


def test_peaks_per_deployment_and_device(run: pd.DataFrame) -> None:
    top = peaks(run).set_index("deployment")
    assert (top.loc["a", "peak_mib"], top.loc["a", "peak_t_ns"]) == (1100, 5 * S)
    assert top.loc[DEVICE, "peak_mib"] == 3600


def test_load_events_find_ollama_unload_and_reload_with_a_new_runner(run: pd.DataFrame) -> None:
    events = load_events(run)
    as_tuples = [(t // S, d, p, e) for t, d, p, e in events[["t_ns", "deployment", "pid", "event"]].itertuples(index=False)]
    assert as_tuples == [
        (2, "a", 10, "load"), (4, "b", 20, "load"), (6, UNATTRIBUTED, 99, "load"),
        (7, "b", 20, "unload"), (7, UNATTRIBUTED, 99, "unload"), (8, "b", 21, "load"),
    ]
    assert events.loc[(events["pid"] == 20) & (events["event"] == "unload"), "used_mib"].item() == 2000


def test_a_process_there_from_the_first_listing_is_present_not_loaded() -> None:
    samples = frame([device_row(0, 900), process_row(0, 5, "a", 400), device_row(1, 900), process_row(1, 5, "a", 400)])
    assert load_events(samples)["event"].tolist() == ["present"]


# ----------------------------------------------------------------------------------------------- energy
def test_energy_is_split_by_utilization_else_by_memory_else_to_no_process() -> None:
    energy_mj = [0, 1000, 3000, 6000, 10000]
    listing = {
        0: [],
        1: [(1, "a", 100, None), (2, "b", 300, None)],
        2: [(1, "a", 100, 30), (2, "b", 300, 10)],
        3: [(1, "a", 100, 0), (2, "b", 300, 0)],
        4: [],
    }
    rows = []
    for t, mj in enumerate(energy_mj):
        rows.append(device_row(t, 1000, energy_mj=mj, power_w=999))
        rows += [process_row(t, p, d, m, u) for p, d, m, u in listing[t]] or [process_row(t)]
    table = energy_per_deployment(frame(rows)).set_index("deployment")
    assert table.loc["a", "energy_j"] == pytest.approx(2.5)
    assert (table.loc["a", "utilization_split_j"], table.loc["a", "memory_split_j"]) == pytest.approx((1.5, 1.0))
    assert table.loc["a", "method"] == "utilization+memory"
    assert table.loc["b", "energy_j"] == pytest.approx(3.5)
    assert (table.loc[NO_PROCESS, "energy_j"], table.loc[NO_PROCESS, "method"]) == (pytest.approx(4.0), "none")
    assert table["share_pct"].sum() == pytest.approx(100)
    assert set(table["energy_source"]) == {"counter"}
    window = energy_per_deployment(frame(rows), start_ns=1 * S, end_ns=2 * S).set_index("deployment")
    assert window.loc["a", "energy_j"] == pytest.approx(1.5) and window.loc["a", "method"] == "utilization"


def test_energy_without_a_counter_integrates_power() -> None:
    rows = [device_row(0, 1, power_w=100), process_row(0, 1, "a", 10), device_row(1, 1, power_w=100), process_row(1, 1, "a", 10),
            device_row(2, 1, power_w=200), process_row(2, 1, "a", 10)]
    table = energy_per_deployment(frame(rows)).set_index("deployment")
    assert table.loc["a", "energy_j"] == pytest.approx(250.0)
    assert (table.loc["a", "energy_source"], table.loc["a", "method"]) == ("power", "memory")


def test_energy_counter_reset_is_skipped_not_negative() -> None:
    rows = []
    for t, mj in enumerate([0, 1000, 500, 1500]):
        rows += [device_row(t, 1, energy_mj=mj), process_row(t, 1, "a", 10)]
    assert energy_per_deployment(frame(rows))["energy_j"].sum() == pytest.approx(2.0)


def test_no_energy_fields_gives_an_empty_table() -> None:
    assert energy_per_deployment(frame([device_row(0, 1), device_row(1, 1)])).empty


def test_the_memory_timeline_stacks_each_listing_once_even_when_two_fall_in_one_tenth_of_a_second() -> None:
    from servelab.analyse import plots

    rows = []
    for t in (0.10, 0.14, 0.22, 0.26):  # 0.10 and 0.14 both round to 0.1 s; 0.22 and 0.26 to 0.2 and 0.3
        rows += [device_row(t, 30_000), process_row(t, 1, "a", 10_000), process_row(t, 2, "b", 20_000)]
    figure = plots.memory_timeline(frame(rows))
    top = max(collection.get_paths()[0].vertices[:, 1].max() for collection in figure.axes[0].collections)
    assert top == pytest.approx(30_000)
