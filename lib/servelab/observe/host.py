"""The fallback without a GPU: the host RSS of each engine process, labelled `source='host_rss'`.

These are host memory figures and are written to `host_memory.csv`, never to `gpu.csv`. The 'device' row is
the host as a whole (`used_mib` = total - available, `device_index` empty). RSS counts the pages of a
memory-mapped model file that the process has touched, so a llama.cpp server's RSS includes its weights.
"""

from __future__ import annotations

from collections.abc import Collection

import psutil

from servelab.records import MemorySample

MIB = 1024 * 1024
SOURCE = "host_rss"


class HostReader:
    """Host memory and the RSS of given pids as MemorySamples; a pid that has exited is left out."""

    source = SOURCE
    device_index = None

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def device(self, t_ns: int) -> MemorySample:
        memory = psutil.virtual_memory()
        return MemorySample(
            t_ns=t_ns,
            source=SOURCE,
            scope="device",
            used_mib=(memory.total - memory.available) / MIB,
            total_mib=memory.total / MIB,
        )

    def processes(self, t_ns: int, known_pids: Collection[int] = ()) -> list[MemorySample]:
        """RSS of each pid in `known_pids` (the attributed process trees): the host cannot list 'GPU processes'."""
        wanted = set(known_pids)
        for pid in list(self._processes):
            if pid not in wanted:
                del self._processes[pid]
        samples = []
        for pid in sorted(wanted):
            try:
                process = self._processes.get(pid) or psutil.Process(pid)
                rss = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                self._processes.pop(pid, None)
                continue
            self._processes[pid] = process
            samples.append(MemorySample(t_ns=t_ns, source=SOURCE, scope="process", pid=pid, used_mib=rss / MIB))
        return samples

    def close(self) -> None:
        self._processes.clear()
