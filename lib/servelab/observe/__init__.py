"""GPU memory profiling: sample NVML (or host RSS without a GPU), attribute processes to deployments, and
analyse the samples: idle, under load, peak, load/unload events, the attribution check and energy per model.
Methods: docs/memory.md.
"""

from servelab.observe.attribution import (
    OllamaVramCheck,
    PidMap,
    container_pids,
    ollama_cross_check,
    ollama_vram_mib,
    pids_from_docker_top,
)
from servelab.observe.energy import energy_per_deployment
from servelab.observe.memory import (
    DEVICE,
    NO_PROCESS,
    UNATTRIBUTED,
    attribution_gap,
    baseline_used_mib,
    by_device,
    deployment_memory,
    devices,
    idle_by_device,
    idle_footprint,
    load_events,
    memory_under_load,
    on_device,
    peaks,
    peaks_by_device,
    read_samples,
    timeline,
)
from servelab.observe.nvml import (
    FreeMemory,
    NvmlReader,
    device_indices,
    free_device_mib,
    gpu_inventory,
    nvml_available,
    open_devices,
)
from servelab.observe.sampler import MemorySampler, next_tick

__all__ = [
    "DEVICE",
    "NO_PROCESS",
    "UNATTRIBUTED",
    "FreeMemory",
    "MemorySampler",
    "NvmlReader",
    "OllamaVramCheck",
    "PidMap",
    "attribution_gap",
    "baseline_used_mib",
    "by_device",
    "container_pids",
    "deployment_memory",
    "device_indices",
    "devices",
    "energy_per_deployment",
    "free_device_mib",
    "idle_by_device",
    "gpu_inventory",
    "idle_footprint",
    "load_events",
    "memory_under_load",
    "next_tick",
    "nvml_available",
    "ollama_cross_check",
    "ollama_vram_mib",
    "on_device",
    "open_devices",
    "peaks",
    "peaks_by_device",
    "pids_from_docker_top",
    "read_samples",
    "timeline",
]
