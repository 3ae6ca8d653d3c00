"""Every GPU of a host: the sampler and the memory analysis over two devices, on NVML readings of two GPUs
replayed through a stand-in for the pynvml library (tests/data/recorded/nvml-two-devices.json; how they were
written is in tests/data/recorded/README.md). The real multi-GPU run waits for a host with several GPUs."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pynvml
import pytest
from servelab.analyse.memory_tables import planner_comparison, planner_sentence
from servelab.analyse.plots import planner_vs_measured
from servelab.observe import (
    DEVICE,
    NO_PROCESS,
    MemorySampler,
    deployment_memory,
    devices,
    energy_per_deployment,
    idle_by_device,
    idle_footprint,
    on_device,
    peaks,
    peaks_by_device,
    read_samples,
)
from servelab.observe.energy import device_energy_intervals
from servelab.params import parse_params
from servelab.records import GPU_FILE, HOST_MEMORY_FILE
from servelab.report.tables import peak_sentence
from servelab.serve.engines.vllm import VLLM_CUDA_CONTEXT_MIB

RECORDED = Path(__file__).resolve().parents[1] / "data" / "recorded"
READINGS = json.loads((RECORDED / "nvml-two-devices.json").read_text())
OWNERS = {4101: "split-tp2", 4102: "split-tp2", 4200: "small"}
"""Who owns the recorded pids: the split model's two workers (one per GPU) and the small model on GPU 1."""


class RecordedTwoGpuNvml:
    """Stands in for pynvml with two GPUs, answering from the readings of `step`; `lose(1)` makes GPU 1 fail."""

    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self) -> None:
        self.step = 0
        self.lost: set[int] = set()

    def _device(self, handle: int) -> dict:
        if handle in self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return READINGS["steps"][self.step]["devices"][handle]

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index not in (0, 1):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        device, mib = self._device(handle), READINGS["mib"]
        total, used = device["total_mib"] * mib, device["used_mib"] * mib
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._device(handle)["utilization_pct"], memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._device(handle)["power_mw"]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetClockInfo(self, handle: int, kind: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        mib = READINGS["mib"]
        return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used_mib"] * mib) for p in self._device(handle)["processes"]]

    def nvmlDeviceGetProcessUtilization(self, handle: int, since_us: int) -> list[SimpleNamespace]:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)


def wait_for_ticks(sampler: MemorySampler, more: int) -> None:
    goal, deadline = sampler.ticks + more, time.monotonic() + 60
    while sampler.ticks < goal:
        assert time.monotonic() < deadline, f"the sampler did not reach {goal} ticks"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def two_gpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict]:
    """Samples of the three recorded moments in turn, 10 listings each, from one sampler over both GPUs."""
    folder = tmp_path_factory.mktemp("two-gpus")
    library = RecordedTwoGpuNvml()
    with MemorySampler(folder, sample_hz=200, process_hz=200, attribution=lambda: OWNERS, nvml_library=library) as sampler:
        for step in range(3):
            library.step = step
            wait_for_ticks(sampler, 10)
    return read_samples(folder / GPU_FILE), sampler.stats()


def test_the_sampler_reads_every_gpu_of_recorded_two_gpu_readings(two_gpu_run: tuple[pd.DataFrame, dict]) -> None:
    samples, stats = two_gpu_run
    assert stats["devices"] == [0, 1] and stats["failures"] == 0 and devices(samples) == [0, 1]
    device_rows = samples[samples["scope"] == "device"]
    # Every tick has one row per GPU, stamped at the same time.
    assert device_rows.groupby("t_ns")["device_index"].apply(lambda s: sorted(s) == [0, 1]).all()
    assert set(device_rows.loc[device_rows["device_index"] == 1, "used_mib"]) == {617, 63_367, 63_989}
    assert set(device_rows.loc[device_rows["device_index"] == 0, "used_mib"]) == {615, 41_115}
    assert device_rows["total_mib"].eq(143_771).all()


def test_each_gpu_lists_its_own_processes_and_a_split_model_has_a_row_on_each(two_gpu_run: tuple[pd.DataFrame, dict]) -> None:
    samples, _ = two_gpu_run
    processes = samples[(samples["scope"] == "process") & samples["pid"].notna()]
    where = processes.groupby("pid")["device_index"].agg(lambda s: tuple(sorted(set(s))))
    assert where.to_dict() == {4101: (0,), 4102: (1,), 4200: (1,)}
    assert processes.groupby("pid")["deployment"].first().to_dict() == OWNERS
    # An idle listing is one row without a pid per GPU, so an empty GPU is told apart from a missing listing.
    empty = samples[(samples["scope"] == "process") & samples["pid"].isna()]
    assert set(empty["device_index"]) == {0, 1}


def test_memory_per_model_sums_its_gpus_and_memory_per_device_keeps_them_apart(two_gpu_run: tuple[pd.DataFrame, dict]) -> None:
    samples, _ = two_gpu_run
    total = peaks(samples).set_index("deployment")["peak_mib"]
    assert total["split-tp2"] == 81_000 and total["small"] == 22_872
    assert total[DEVICE] == 41_115 + 63_989
    per_device = peaks_by_device(samples).set_index(["device_index", "deployment"])
    assert per_device.loc[(0, "split-tp2"), "peak_mib"] == 40_500
    assert per_device.loc[(1, "split-tp2"), "peak_mib"] == 40_500
    assert per_device.loc[(1, "small"), "peak_mib"] == 22_872
    assert per_device.loc[(1, DEVICE), "peak_mib"] == 63_989 and per_device.loc[(1, DEVICE), "total_mib"] == 143_771
    assert (0, "small") not in per_device.index or per_device.loc[(0, "small"), "peak_mib"] == 0
    loaded = deployment_memory(samples).query("deployment == 'split-tp2' and used_mib > 0")
    assert loaded["processes"].eq(2).all()  # one worker per GPU
    under_load = samples.loc[samples["used_mib"] == 22_872, "t_ns"]
    points = pd.DataFrame({"point_id": ["small/en/c-8"], "start_ns": [under_load.min()], "end_ns": [under_load.max()]})
    idle = idle_by_device(samples, points).set_index(["device_index", "deployment"])["idle_mib"]
    assert idle[(0, "split-tp2")] == 40_500 and idle[(1, "small")] == 22_250
    assert idle_footprint(samples, points).set_index("deployment")["idle_mib"]["split-tp2"] == 81_000


def test_each_gpus_energy_goes_to_the_processes_on_that_gpu(two_gpu_run: tuple[pd.DataFrame, dict]) -> None:
    samples, _ = two_gpu_run
    energy = energy_per_deployment(samples).set_index("deployment")
    per_gpu = {index: device_energy_intervals(on_device(samples, index))["energy_j"].sum() for index in (0, 1)}
    assert energy["energy_j"].sum() == pytest.approx(per_gpu[0] + per_gpu[1])
    assert energy["share_pct"].sum() == pytest.approx(100.0)
    # The small model holds memory on GPU 1 only, so it gets a share of GPU 1's energy and none of GPU 0's.
    small_on_gpu1 = energy_per_deployment(on_device(samples, 1)).set_index("deployment")["energy_j"]["small"]
    assert energy.loc["small", "energy_j"] == pytest.approx(small_on_gpu1) and 0 < small_on_gpu1 < per_gpu[1]
    assert set(energy.index) <= {"split-tp2", "small", NO_PROCESS}


def test_a_lost_gpu_costs_its_own_rows_while_the_other_is_still_read(tmp_path: Path) -> None:
    library = RecordedTwoGpuNvml()
    library.step = 1
    with MemorySampler(tmp_path, sample_hz=200, attribution=lambda: OWNERS, nvml_library=library, fallback_after_s=0.05) as sampler:
        wait_for_ticks(sampler, 5)
        library.lost.add(1)
        wait_for_ticks(sampler, 40)  # well past fallback_after_s: GPU 0 still answers, so no fall back
    samples = read_samples(tmp_path / GPU_FILE)
    assert sampler.mode == "nvml" and not sampler.fell_back and not (tmp_path / HOST_MEMORY_FILE).exists()
    assert sampler.failures > 0 and "device 1" in sampler.failure_messages[0]
    device_rows = samples[samples["scope"] == "device"]
    assert (device_rows["device_index"] == 0).sum() > (device_rows["device_index"] == 1).sum() + 30


def test_one_named_gpu_is_read_alone(tmp_path: Path) -> None:
    library = RecordedTwoGpuNvml()
    library.step = 2
    with MemorySampler(tmp_path, sample_hz=200, device_index=1, nvml_library=library) as sampler:
        wait_for_ticks(sampler, 5)
    assert sampler.stats()["devices"] == [1]
    assert devices(read_samples(tmp_path / GPU_FILE)) == [1]


def test_a_gpu_csv_of_one_device_written_before_reads_the_same_per_device(tmp_path: Path) -> None:
    """The recorded one-GPU run (an older gpu.csv): the per-device tables are its one device's, equal to the totals."""
    path = tmp_path / GPU_FILE
    path.write_bytes(gzip.decompress((RECORDED / "h200-sglang-run" / "gpu.csv.gz").read_bytes()))
    samples = read_samples(path)
    assert devices(samples) == [0]
    whole = peaks(samples).set_index("deployment")["peak_mib"]
    per_device = peaks_by_device(samples).set_index("deployment")
    assert per_device["device_index"].eq(0).all()
    pd.testing.assert_series_equal(per_device["peak_mib"].sort_index(), whole.sort_index())


def test_the_planner_is_set_against_each_gpu_and_a_split_model_is_compared_on_each_of_its_gpus(two_gpu_run: tuple[pd.DataFrame, dict]) -> None:
    samples, _ = two_gpu_run
    total = 143_771

    def vllm(name: str, mib: float, gpus: list[int], tensor_parallel_size: int = 1) -> dict:
        utilization = round((mib - VLLM_CUDA_CONTEXT_MIB) / total, 4)
        engine = {"kind": "vllm", "gpu_memory_utilization": utilization, "tensor_parallel_size": tensor_parallel_size}
        return {"name": name, "model": "Qwen/Qwen2.5-3B-Instruct", "gpus": gpus, "engine": engine}

    params = parse_params({"name": "two-gpus", "sweep": {"load": [{"kind": "concurrency", "values": [1]}]},
                           "deployments": [vllm("split-tp2", 40_500, [0, 1], 2), vllm("small", 22_250, [1])]})
    under_load = samples.loc[samples["used_mib"] == 22_872, "t_ns"]
    points = pd.DataFrame({"point_id": ["small/en/c-8"], "start_ns": [under_load.min()], "end_ns": [under_load.max()]})
    comparison = planner_comparison(params, samples, points)
    rows = comparison.set_index(["device_index", "deployment"])
    assert sorted(rows.index) == [(0, "split-tp2"), (1, "small"), (1, "split-tp2")]
    assert rows.loc[(0, "split-tp2"), "measured_mib"] == rows.loc[(1, "split-tp2"), "measured_mib"] == 40_500
    assert rows.loc[(1, "small"), "measured_mib"] == 22_250 and rows.loc[(1, "small"), "peak_mib"] == 22_872
    assert rows["error_pct"].abs().max() < 0.1, "each GPU's half against its own GPU's prediction, not the sum of both"
    assert "on any one GPU" in planner_sentence(comparison)
    assert planner_vs_measured(comparison).alt.count("on GPU") == 3
    table = comparison.rename(columns={"measured_mib": "idle MiB", "peak_mib": "peak MiB"}).set_index("deployment")
    assert "small grew by 622 MiB" in peak_sentence(samples, table)
