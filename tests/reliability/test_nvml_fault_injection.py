"""NVML fails in the middle of a real run: the sampler records the failure and the run goes on.

There is no GPU here, so the sampler's injectable `nvml_library` is a shim that stands in for pynvml: it serves
one healthy device until the test breaks it, and from then on raises the real `pynvml.NVMLError`
(GPU_IS_LOST), as NVML does when a GPU falls off the bus. Everything else is real: the llama-server, the sweep,
the sampler thread, the manifest.
"""

from __future__ import annotations

import functools
import threading
from types import SimpleNamespace

import pandas as pd
import pynvml
import pytest
from conftest import embedded_params
from fault_harness import check_nothing_lost, lines, wait_for, write_yaml
from servelab import observe as gpu
from servelab.manifest import read_manifest
from servelab.measure.sweep import run_sweep
from servelab.records import GPU_FILE, HOST_MEMORY_FILE, REQUESTS_FILE, latest_points
from servelab.session import lab, open_run

pytestmark = [pytest.mark.engine, pytest.mark.slow]
MIB = 2**20


class FaultInjectingNvml:
    """pynvml's calls for one 80 GiB device, failing with NVML_ERROR_GPU_IS_LOST once `lose_gpu()` is called."""

    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self) -> None:
        self.lost = threading.Event()
        self.gpu_pids: dict[int, int] = {}
        self.failed_calls = 0

    def lose_gpu(self) -> None:
        self.lost.set()

    def _read(self) -> None:
        if self.lost.is_set():
            self.failed_calls += 1
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def nvmlInit(self) -> None:
        self._read()

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        self._read()
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self._read()
        return "gpu0"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        self._read()
        used = 512 * MIB + sum(self.gpu_pids.values())
        return SimpleNamespace(total=80 * 1024 * MIB, used=used, free=80 * 1024 * MIB - used)

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        self._read()
        return 120_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        self._read()
        return 1_000_000

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        self._read()
        return SimpleNamespace(gpu=50, memory=10)

    def nvmlDeviceGetClockInfo(self, handle: str, kind: int) -> int:
        self._read()
        return 1500

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        self._read()
        return 60

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        self._read()
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.gpu_pids.items()]

    def nvmlDeviceGetProcessUtilization(self, handle: str, since_us: int) -> list[SimpleNamespace]:
        self._read()
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)


def test_nvml_fault_injection_mid_run_is_recorded_by_the_sampler_and_the_run_goes_on(tmp_path, monkeypatch):
    """Expectation: NVML starts failing (GPU_IS_LOST) once the first request of a real sweep is on disk. The
    sweep is not disturbed: every point ends done with every request on disk. The sampler thread survives,
    counts the failures, falls back to host RSS (host_memory.csv) and says so in the manifest
    (memory_sampler: failures, last_failure, fell_back); gpu.csv keeps the NVML rows from before."""
    shim = FaultInjectingNvml()
    monkeypatch.setattr(gpu, "MemorySampler", functools.partial(gpu.MemorySampler, nvml_library=shim, fallback_after_s=0.2))
    params = embedded_params(load=[{"kind": "concurrency", "values": [1, 2]}], requests_per_point=4)
    params, run_dir = open_run(write_yaml(tmp_path / "nvml.yaml", params), outputs_dir=tmp_path / "outputs")
    stop = threading.Event()

    def break_nvml_mid_run() -> None:
        while not stop.wait(0.01):
            if lines(run_dir / REQUESTS_FILE) >= 1:
                shim.lose_gpu()
                return

    with lab(params, run_dir) as current:
        assert current.sampler.mode == "nvml"
        shim.gpu_pids = {current.fleet["smollm2"].pid: 300 * MIB}
        watcher = threading.Thread(target=break_nvml_mid_run, daemon=True)
        watcher.start()
        try:
            run_sweep(params, run_dir, current.fleet, progress=False)
            assert shim.lost.is_set(), "the sweep ended before NVML was broken"
            wait_for(lambda: current.sampler.fell_back, "the sampler's fallback to host RSS", 30)
            assert current.sampler.running
        finally:
            stop.set()
    assert [p.status for p in latest_points(run_dir).values()] == ["done", "done"]
    check_nothing_lost(run_dir, warmup_requests=1)
    stats = read_manifest(run_dir)["memory_sampler"]
    assert stats["failures"] >= 1 and stats["fell_back"] is True and stats["mode"] == "host_rss"
    assert "GPU is lost" in stats["last_failure"] or "GPU is lost" in str(current.sampler.failure_messages)
    assert stats["paths"] == [str(run_dir / GPU_FILE), str(run_dir / HOST_MEMORY_FILE)]
    assert set(pd.read_csv(run_dir / GPU_FILE)["source"]) == {"nvml"}
    assert len(pd.read_csv(run_dir / HOST_MEMORY_FILE)) > 0
