"""Reading the GPUs through NVML, each on its own (`NvmlReader`), all that NVML sees (`open_devices`): the device's memory, utilization, power, energy, clocks and temperature, and the
memory and SM utilization of every compute process on it.

NVML is reached through `pynvml` (nvidia-ml-py). A field that this GPU or driver does not support reads as None
from then on, without asking again; any other NVML error is raised to the sampler, which counts it.

Two calls are slow and change slowly, so they are read less often than the rest. Measured on an H100 80GB
(driver 580.159.04): the total-energy counter takes 3.5 ms a call and moves every ~100 ms; per-process
utilization takes 1.5 ms and NVML holds one sample per process every 200 ms. Memory, utilization, power,
clocks and temperature take 2-10 us each, the process list 45 us. So the energy counter is read at most every
`energy_every_s` (other device rows leave energy_mj empty), process utilization at most every
`utilization_every_s`, and a process's last utilization is reported for `utilization_hold_s` after it arrived.
Memory is read on every call. Utilization, power, clocks and temperature are read at most every
`detail_every_s` (rows in between leave them empty): NVML itself averages utilization and power over 1/6 s to
1 s, so reading them 100 times a second only costs calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import pynvml

from servelab.records import MemorySample

log = logging.getLogger(__name__)

MIB = 1024 * 1024
SOURCE = "nvml"
T = TypeVar("T")

_UNSUPPORTED = (
    pynvml.NVML_ERROR_NOT_SUPPORTED,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    pynvml.NVML_ERROR_NO_PERMISSION,
)


def nvml_available(library: ModuleType | Any = pynvml) -> bool:
    """True when NVML loads and sees at least one GPU; never raises."""
    try:
        library.nvmlInit()
    except Exception:  # a missing library, driver or device all mean "no NVML"
        return False
    try:
        return int(library.nvmlDeviceGetCount()) > 0
    except Exception:
        return False
    finally:
        try:
            library.nvmlShutdown()
        except Exception:
            pass


@dataclass(frozen=True)
class FreeMemory:
    """What one GPU holds and has free right now, MiB."""

    device_index: int
    total_mib: float
    used_mib: float
    free_mib: float


def device_total_mib(device_index: int = 0) -> float:
    """The local GPU's total memory, MiB, for sizing a plan; a ParamsError naming the fix when no GPU is visible."""
    from servelab.errors import ParamsError

    device = free_device_mib(device_index)
    if device is None:
        raise ParamsError("no GPU is visible here to size the plan; pass total_mib (servelab plan --total-mib 81559)")
    return device.total_mib


def free_device_mib(device_index: int = 0, library: ModuleType | Any = pynvml) -> FreeMemory | None:
    """The device's total, used and free memory in MiB, or None when there is no NVML or no such GPU."""
    try:
        library.nvmlInit()
    except Exception:
        return None
    try:
        handle = library.nvmlDeviceGetHandleByIndex(device_index)
        memory = library.nvmlDeviceGetMemoryInfo(handle)
        return FreeMemory(device_index, memory.total / MIB, memory.used / MIB, memory.free / MIB)
    except Exception:
        return None
    finally:
        try:
            library.nvmlShutdown()
        except Exception:
            pass


def gpu_inventory(library: ModuleType | Any = pynvml) -> dict[str, Any] | str:
    """The manifest's GPU section: names, UUIDs, memory and driver from NVML, or the string 'none'."""
    try:
        library.nvmlInit()
    except Exception:  # no driver, no library, no device: all mean "none"
        return "none"
    try:
        devices = []
        for index in range(library.nvmlDeviceGetCount()):
            handle = library.nvmlDeviceGetHandleByIndex(index)
            devices.append(
                {
                    "index": index,
                    "name": _text(library.nvmlDeviceGetName(handle)),
                    "uuid": _text(library.nvmlDeviceGetUUID(handle)),
                    "memory_total_mib": library.nvmlDeviceGetMemoryInfo(handle).total / MIB,
                }
            )
        return {"driver": _text(library.nvmlSystemGetDriverVersion()), "devices": devices}
    finally:
        library.nvmlShutdown()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReader:
    """One GPU's readings as MemorySamples. Opens NVML on creation (raises pynvml.NVMLError if it cannot)."""

    source = SOURCE

    def __init__(
        self,
        device_index: int = 0,
        library: ModuleType | Any = pynvml,
        energy_every_s: float = 0.1,
        utilization_every_s: float = 0.2,
        utilization_hold_s: float = 1.0,
        detail_every_s: float = 0.1,
    ) -> None:
        self.device_index = device_index
        self.detail_every_ns = int(detail_every_s * 1e9)
        self.energy_every_ns = int(energy_every_s * 1e9)
        self.utilization_every_ns = int(utilization_every_s * 1e9)
        self.utilization_hold_ns = int(utilization_hold_s * 1e9)
        self._nvml = library
        self._nvml.nvmlInit()
        try:
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:
            self._nvml.nvmlShutdown()
            raise
        self.unsupported: set[str] = set()
        self._utilization_seen_us = 0
        self._process_utilization_works = False
        self._utilization: dict[int, tuple[float, int]] = {}
        """pid -> (mean SM % of its latest NVML samples, when they arrived in ns)."""
        self._energy_read_ns: int | None = None
        self._utilization_read_ns: int | None = None
        self._detail_read_ns: int | None = None

    def _optional(self, name: str, read: Callable[[], T]) -> T | None:
        if name in self.unsupported:
            return None
        try:
            return read()
        except pynvml.NVMLError as error:
            if error.value in _UNSUPPORTED:
                log.info("NVML field %s is not supported on device %d: %s", name, self.device_index, error)
                self.unsupported.add(name)
                return None
            raise

    def device(self, t_ns: int) -> MemorySample:
        """The device as a whole at `t_ns`; memory is required, every other field may be None."""
        nvml, handle = self._nvml, self._handle
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        sample = MemorySample(
            t_ns=t_ns,
            source=SOURCE,
            scope="device",
            device_index=self.device_index,
            used_mib=memory.used / MIB,
            total_mib=memory.total / MIB,
        )
        if self._detail_read_ns is None or t_ns - self._detail_read_ns >= self.detail_every_ns:
            self._detail_read_ns = t_ns
            self._read_details(sample)
        if self._energy_read_ns is None or t_ns - self._energy_read_ns >= self.energy_every_ns:
            self._energy_read_ns = t_ns
            energy_mj = self._optional("energy", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            sample.energy_mj = None if energy_mj is None else float(energy_mj)
        return sample

    def _read_details(self, sample: MemorySample) -> None:
        nvml, handle = self._nvml, self._handle
        power_mw = self._optional("power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        sample.power_w = None if power_mw is None else power_mw / 1000.0
        sample.utilization_pct = self._optional("utilization", lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        sample.sm_clock_mhz = self._optional("sm_clock", lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))
        sample.mem_clock_mhz = self._optional("mem_clock", lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)))
        sample.temperature_c = self._optional(
            "temperature", lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        )

    def processes(self, t_ns: int, known_pids: Collection[int] = ()) -> list[MemorySample]:
        """Every compute process on the device with its memory and, where NVML gives it, its SM utilization.

        `known_pids` is not needed here (NVML lists all processes) and is accepted for the host reader's sake.
        """
        running = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        if self._utilization_read_ns is None or t_ns - self._utilization_read_ns >= self.utilization_every_ns:
            self._utilization_read_ns = t_ns
            for pid, value in self._process_utilization().items():
                self._utilization[pid] = (value, t_ns)
        default = 0.0 if self._process_utilization_works else None
        utilization = {pid: value for pid, (value, at) in self._utilization.items() if t_ns - at <= self.utilization_hold_ns}
        self._utilization = {pid: self._utilization[pid] for pid in utilization}
        return [
            MemorySample(
                t_ns=t_ns,
                source=SOURCE,
                scope="process",
                device_index=self.device_index,
                pid=int(process.pid),
                used_mib=None if process.usedGpuMemory is None else process.usedGpuMemory / MIB,
                utilization_pct=utilization.get(int(process.pid), default),
            )
            for process in running
        ]

    def _process_utilization(self) -> dict[int, float]:
        """Mean SM utilization per pid over the samples NVML took since the last call; {} when unknown."""
        if "process_utilization" in self.unsupported:
            return {}
        try:
            samples = self._nvml.nvmlDeviceGetProcessUtilization(self._handle, self._utilization_seen_us)
        except pynvml.NVMLError as error:
            if error.value == pynvml.NVML_ERROR_NOT_FOUND:
                self._process_utilization_works = True  # no process was busy since the last call
                return {}
            if error.value in _UNSUPPORTED:
                self.unsupported.add("process_utilization")
                return {}
            raise
        self._process_utilization_works = True
        totals: dict[int, list[float]] = {}
        for sample in samples:
            totals.setdefault(int(sample.pid), []).append(float(sample.smUtil))
            self._utilization_seen_us = max(self._utilization_seen_us, int(sample.timeStamp))
        return {pid: sum(values) / len(values) for pid, values in totals.items()}

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # closing never fails the caller
            pass


def device_indices(library: ModuleType | Any = pynvml) -> list[int]:
    """Every GPU NVML sees (all of the host's, whatever CUDA_VISIBLE_DEVICES says), as indices; raises
    pynvml.NVMLError when NVML cannot be opened."""
    library.nvmlInit()
    try:
        return list(range(int(library.nvmlDeviceGetCount())))
    finally:
        library.nvmlShutdown()


def open_devices(
    devices: Sequence[int] | None = None, library: ModuleType | Any = pynvml, **intervals: float
) -> list[NvmlReader]:
    """One reader per GPU: `devices`, or every GPU NVML sees. Each holds its own NVML handle (NVML counts its
    inits); raises pynvml.NVMLError when NVML or one of the devices cannot be opened, closing what it opened."""
    indices = list(devices) if devices is not None else device_indices(library)
    readers: list[NvmlReader] = []
    try:
        for index in indices:
            readers.append(NvmlReader(index, library, **intervals))
    except Exception:
        for reader in readers:
            reader.close()
        raise
    return readers
