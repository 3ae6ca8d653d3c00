"""What the memory sampler costs in CPU: process CPU time over fixed wall-clock windows with the sampler off and
on, interleaved in one run, as % of one core. Also the cost of single NVML reads where NVML is present.

    .venv/bin/python benchmarks/nvml_overhead.py [--hz 100] [--window-s 5] [--rounds 3] [--json out.json]
        [--variants default 50:0.1:0.2:100 floor-event floor-sleep]
        PROCESS_HZ:ENERGY_EVERY_S:UTILIZATION_EVERY_S[:DETAIL_HZ] sets the sampler's rates; `floor-event` and
        `floor-sleep` are a thread that only wakes at the same rate (threading.Event.wait, time.sleep) and reads
        nothing: what waking alone costs on this machine, which no sampler at this rate can go below.

Each variant is measured in the same interleaved rounds, so their figures compare side by side. A window
starts `--settle-s` after its sampler, so it measures sampling, not NVML's start-up.

Without NVML (a CPU machine) it says so and measures the host-RSS fallback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from servelab.observe import MemorySampler, NvmlReader, PidMap, nvml_available


def cpu_s() -> float:
    """User + system CPU seconds of this whole process (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_s(native_id: int | None) -> float:
    if native_id is None:
        return 0.0
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return 0.0


class WakeFloor:
    """A thread that wakes at `hz` and does nothing else: the floor under any sampler at that rate."""

    def __init__(self, hz: float, primitive: str) -> None:
        self.period_s, self.primitive = 1.0 / hz, primitive
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def thread_id(self) -> int | None:
        return self._thread.native_id

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            self.ticks += 1
            delay = max(0.0, start + self.ticks * self.period_s - time.monotonic())
            if self.primitive == "event":
                self._stop.wait(delay)
            else:
                time.sleep(delay)

    def start(self) -> WakeFloor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def stats(self) -> dict[str, Any]:
        return {"missed_ticks": 0, "max_lateness_ms": 0.0, "failures": 0, "mode": f"floor-{self.primitive}"}


def window(seconds: float, sampler: MemorySampler | WakeFloor | None, settle_s: float) -> dict[str, Any]:
    """One window: wall time, process CPU (getrusage and process_time), and the sampler thread's own CPU."""
    if sampler is not None:
        sampler.start()
    time.sleep(settle_s)
    thread_id = sampler.thread_id if sampler is not None else None
    ticks0 = sampler.ticks if sampler is not None else 0
    wall0, cpu0, process0 = time.perf_counter(), cpu_s(), time.process_time()
    thread0 = thread_cpu_s(thread_id)
    time.sleep(seconds)
    thread1 = thread_cpu_s(thread_id)
    wall, cpu, process = time.perf_counter() - wall0, cpu_s() - cpu0, time.process_time() - process0
    row: dict[str, Any] = {
        "sampler": "on" if sampler else "off",
        "wall_s": wall,
        "cpu_pct_of_core": 100 * cpu / wall,
        "process_time_pct_of_core": 100 * process / wall,
        "sampler_thread_pct_of_core": 100 * (thread1 - thread0) / wall if sampler else 0.0,
    }
    if sampler is not None:
        ticks = sampler.ticks - ticks0
        sampler.stop()
        row |= {"ticks": ticks, "achieved_hz": ticks / wall, **{k: sampler.stats()[k] for k in ("missed_ticks", "max_lateness_ms", "failures", "mode")}}
    return row


def nvml_call_costs(device_index: int, calls: int = 2000) -> dict[str, float]:
    """Microseconds per full device reading, per memory-only reading and per process listing, over `calls`."""
    full = NvmlReader(device_index, detail_every_s=0.0, energy_every_s=0.0)
    memory_only = NvmlReader(device_index, detail_every_s=3600.0, energy_every_s=3600.0)
    try:
        memory_only.device(0)  # the first reading always reads every field
        costs = {}
        readings = (
            ("device_read_us", lambda: full.device(0)),
            ("memory_only_read_us", lambda: memory_only.device(1)),
            ("process_listing_us", lambda: full.processes(0)),
        )
        for name, read in readings:
            start = time.perf_counter()
            for _ in range(calls):
                read()
            costs[name] = 1e6 * (time.perf_counter() - start) / calls
        return costs
    finally:
        full.close()
        memory_only.close()


FLOORS = ("floor-event", "floor-sleep")


def _variant(name: str) -> dict[str, float]:
    """'default' or a floor (no sampler settings), or PROCESS_HZ:ENERGY_EVERY_S:UTILIZATION_EVERY_S[:DETAIL_HZ] as
    MemorySampler keyword arguments."""
    if name in ("default", *FLOORS):
        return {}
    keys = ("process_hz", "energy_every_s", "utilization_every_s", "detail_hz")
    try:
        values = [float(part) for part in name.split(":")]
    except ValueError:
        values = []
    if len(values) not in (3, 4):
        raise SystemExit(f"--variants {name!r}: expected 'default', 'floor-event', 'floor-sleep' or "
                         "PROCESS_HZ:ENERGY_EVERY_S:UTILIZATION_EVERY_S[:DETAIL_HZ], e.g. 10:1:1:10")
    return dict(zip(keys, values, strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hz", type=float, default=100.0)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=0.5, help="wait this long after starting a sampler before its window")
    parser.add_argument("--device-index", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--variants", nargs="+", default=["default"],
                        help="'default' (the sampler's defaults), 'floor-event', 'floor-sleep', or "
                             "PROCESS_HZ:ENERGY_EVERY_S:UTILIZATION_EVERY_S[:DETAIL_HZ]")
    args = parser.parse_args(argv)

    has_nvml = nvml_available()
    if has_nvml:
        print(f"NVML: present; sampling GPU {args.device_index} at {args.hz:g} Hz")
    else:
        print(f"NVML: ABSENT on this machine; measuring the host_rss fallback at {args.hz:g} Hz instead (no GPU numbers)")
    pid_map = PidMap()
    pid_map.add("this-benchmark", os.getpid())
    variants = {name: _variant(name) for name in args.variants}
    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        for round_index in range(args.rounds):
            rows.append({"round": round_index, "variant": "-"} | window(args.window_s, None, args.settle_s))
            for name, settings in variants.items():
                sampler: MemorySampler | WakeFloor
                if name in FLOORS:
                    sampler = WakeFloor(args.hz, name.removeprefix("floor-"))
                else:
                    sampler = MemorySampler(Path(run_dir) / f"r{round_index}-{len(rows)}", sample_hz=args.hz,
                                            device_index=args.device_index, attribution=pid_map, **settings)
                rows.append({"round": round_index, "variant": name} | window(args.window_s, sampler, args.settle_s))
    off = [r["cpu_pct_of_core"] for r in rows if r["sampler"] == "off"]
    off_mean = sum(off) / len(off)
    result: dict[str, Any] = {"nvml": has_nvml, "hz": args.hz, "cores": psutil.cpu_count(), "windows": rows,
                              "off_cpu_pct_of_core": off_mean, "variants": {}}
    for name in variants:
        on = [r for r in rows if r["variant"] == name]
        on_mean = sum(r["cpu_pct_of_core"] for r in on) / len(on)
        result["variants"][name] = {
            "mode": on[0]["mode"],
            "on_cpu_pct_of_core": on_mean,
            "overhead_pct_of_core": on_mean - off_mean,
            "sampler_thread_pct_of_core": sum(r["sampler_thread_pct_of_core"] for r in on) / len(on),
        }
    if has_nvml:
        result |= nvml_call_costs(args.device_index)

    print(f"{'round':>5} {'variant':>14} {'wall s':>7} {'CPU % of core':>13} {'thread %':>8} {'ticks':>6} {'Hz':>7} {'missed':>6} {'late ms':>8}")
    for r in rows:
        print(f"{r['round']:>5} {r['variant']:>14} {r['wall_s']:>7.2f} {r['cpu_pct_of_core']:>13.2f} {r['sampler_thread_pct_of_core']:>8.2f} "
              f"{r.get('ticks', ''):>6} {r.get('achieved_hz', 0):>7.1f} {r.get('missed_ticks', ''):>6} {r.get('max_lateness_ms', 0):>8.2f}")
    for name, figures in result["variants"].items():
        print(f"sampler ({figures['mode']}, {name}) at {args.hz:g} Hz costs {figures['overhead_pct_of_core']:.2f} % of one core "
              f"(process {off_mean:.2f} % off, {figures['on_cpu_pct_of_core']:.2f} % on; "
              f"sampler thread alone {figures['sampler_thread_pct_of_core']:.2f} %)")
    if has_nvml:
        print(f"one full device reading {result['device_read_us']:.1f} us, memory only {result['memory_only_read_us']:.1f} us, "
              f"one process listing {result['process_listing_us']:.1f} us")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
