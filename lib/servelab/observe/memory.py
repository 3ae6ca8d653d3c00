"""Pure functions from memory samples (the rows of `gpu.csv` or `host_memory.csv`) to tidy tables, MiB throughout.

A deployment's memory at a process listing is the sum over its processes; at a listing where it has none, it
is 0. Listings are the distinct `t_ns` of the process rows (the sampler writes a row with no pid when a listing
found no process at all). Processes no deployment owns are summed as `UNATTRIBUTED`; the device's memory that
no process accounts for is `NO_PROCESS`; the device itself is `DEVICE`. Methods: docs/memory.md.

With several GPUs, `DEVICE` is every GPU together (used and total summed at each tick), and a deployment's memory
is the sum over its processes on every GPU, so a model split over two GPUs counts both halves. The same tables
for each GPU on its own come from `by_device` (`peaks_by_device`, `idle_by_device`). Files written before the
sampler read every GPU hold one device, and read the same as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servelab.records import MEMORY_COLUMNS

DEVICE = "(device)"
UNATTRIBUTED = "(unattributed)"
NO_PROCESS = "(no process)"


def read_samples(path: str | Path) -> pd.DataFrame:
    """A samples CSV as a frame with every MemorySample column, sorted by time; an absent file gives an empty frame."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=MEMORY_COLUMNS)
    frame = pd.read_csv(path)
    for column in MEMORY_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    return frame[MEMORY_COLUMNS].sort_values("t_ns", kind="stable").reset_index(drop=True)


def _device(samples: pd.DataFrame) -> pd.DataFrame:
    """One device row per tick: the GPU's own, or with several GPUs their used and total memory summed."""
    rows = samples[samples["scope"] == "device"].sort_values("t_ns", kind="stable")
    rows = rows.drop_duplicates(["t_ns", "device_index"], keep="last")
    if rows["device_index"].nunique() <= 1:
        return rows.reset_index(drop=True)
    summed = rows.groupby("t_ns")[["used_mib", "total_mib", "power_w", "energy_mj"]].sum(min_count=1)
    return summed.reset_index()


def _process_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """Rows of real processes (pid set), with `label` = deployment or UNATTRIBUTED."""
    rows = samples[(samples["scope"] == "process") & samples["pid"].notna()].copy()
    rows["label"] = rows["deployment"].where(rows["deployment"].notna(), UNATTRIBUTED).astype(str)
    return rows


def listing_times(samples: pd.DataFrame) -> np.ndarray:
    """The times at which processes were listed, ascending."""
    return np.sort(samples.loc[samples["scope"] == "process", "t_ns"].unique())


def deployment_memory(samples: pd.DataFrame) -> pd.DataFrame:
    """Per listing and deployment: `used_mib` (sum over its processes, 0 when it has none) and `processes`."""
    times = listing_times(samples)
    rows = _process_rows(samples)
    labels = sorted(rows["label"].unique())
    if len(times) == 0 or not labels:
        return pd.DataFrame({"t_ns": pd.Series(dtype="int64"), "deployment": pd.Series(dtype=str),
                             "used_mib": pd.Series(dtype=float), "processes": pd.Series(dtype="int64")})
    grouped = rows.groupby(["t_ns", "label"]).agg(used_mib=("used_mib", "sum"), processes=("pid", "nunique"))
    full = pd.MultiIndex.from_product([times, labels], names=["t_ns", "label"])
    table = grouped.reindex(full, fill_value=0).reset_index().rename(columns={"label": "deployment"})
    table["processes"] = table["processes"].astype("int64")
    return table


def _device_at(times: pd.Series | np.ndarray, samples: pd.DataFrame) -> pd.Series:
    """The device's used_mib at each of `times` (the nearest device row)."""
    device = _device(samples)[["t_ns", "used_mib"]]
    left = pd.DataFrame({"t_ns": np.asarray(times, dtype="int64")})
    if device.empty:
        return pd.Series(np.nan, index=left.index)
    device = device.assign(t_ns=device["t_ns"].astype("int64"))
    merged = pd.merge_asof(left.reset_index(), device, on="t_ns", direction="nearest").set_index("index")
    return merged["used_mib"]


def timeline(samples: pd.DataFrame) -> pd.DataFrame:
    """Long frame for a stacked plot: t_ns, t_s, deployment, used_mib; `NO_PROCESS` is the device's rest (>= 0)."""
    memory = deployment_memory(samples)[["t_ns", "deployment", "used_mib"]]
    times = listing_times(samples)
    if len(times) and not _device(samples).empty:
        summed = memory.groupby("t_ns")["used_mib"].sum().reindex(times, fill_value=0.0)
        rest = (_device_at(times, samples).to_numpy() - summed.to_numpy()).clip(min=0)
        memory = pd.concat([memory, pd.DataFrame({"t_ns": times, "deployment": NO_PROCESS, "used_mib": rest})])
    start = samples["t_ns"].min() if len(samples) else 0
    memory = memory.sort_values(["t_ns", "deployment"], kind="stable").reset_index(drop=True)
    memory.insert(1, "t_s", (memory["t_ns"] - start) / 1e9)
    return memory


def baseline_used_mib(samples: pd.DataFrame, before_ns: int | None = None) -> float:
    """Median device used_mib before `before_ns`; NaN if none.

    By default, before the first process that was not already on the device at the first listing takes memory:
    whoever starts it (one of ours, still unattributed while it boots, or anyone else), the memory it takes is
    not the baseline's. Processes present from the start are part of the baseline."""
    device = _device(samples)
    if before_ns is None:
        rows = _process_rows(samples)
        times = listing_times(samples)
        present = set(rows.loc[rows["t_ns"] == times[0], "pid"]) if len(times) else set()
        newcomers = rows[~rows["pid"].isin(present) & (rows["used_mib"].fillna(1.0) > 0)]
        before_ns = int(newcomers["t_ns"].min()) if not newcomers.empty else None
    if before_ns is not None:
        device = device[device["t_ns"] < before_ns]
    return float(device["used_mib"].median()) if not device.empty else float("nan")


def attribution_gap(samples: pd.DataFrame, baseline_mib: float | None = None) -> pd.DataFrame:
    """Per listing: device used - baseline against the memory of the processes listed.

    listed_mib = attributed_mib (processes of our deployments) + unattributed_mib (processes no deployment
    owns). gap_mib = (device_used_mib - baseline_mib) - listed_mib: memory no process accounts for. gap_pct is
    gap_mib over (device used - baseline).
    """
    if baseline_mib is None:
        baseline_mib = baseline_used_mib(samples)
    times = listing_times(samples)
    rows = _process_rows(samples)
    owned = rows[rows["label"] != UNATTRIBUTED].groupby("t_ns")["used_mib"].sum()
    strangers = rows[rows["label"] == UNATTRIBUTED].groupby("t_ns")["used_mib"].sum()
    frame = pd.DataFrame({"t_ns": times})
    frame["device_used_mib"] = _device_at(times, samples).to_numpy()
    frame["baseline_mib"] = baseline_mib
    frame["attributed_mib"] = owned.reindex(times, fill_value=0.0).to_numpy()
    frame["unattributed_mib"] = strangers.reindex(times, fill_value=0.0).to_numpy()
    frame["listed_mib"] = frame["attributed_mib"] + frame["unattributed_mib"]
    above = frame["device_used_mib"] - frame["baseline_mib"]
    frame["gap_mib"] = above - frame["listed_mib"]
    frame["gap_pct"] = 100.0 * frame["gap_mib"] / above.where(above > 0)
    return frame


def _outside(times: pd.Series, points: pd.DataFrame | None, last_ns: int) -> pd.Series:
    keep = pd.Series(True, index=times.index)
    if points is None or points.empty:
        return keep
    for start, end in zip(points["start_ns"], points["end_ns"], strict=True):
        end = last_ns if pd.isna(end) else end
        keep &= ~times.between(start, end)
    return keep


def idle_footprint(samples: pd.DataFrame, points: pd.DataFrame | None = None, settle_s: float = 0.0) -> pd.DataFrame:
    """Per deployment, its memory once loaded and before any load: idle_mib (median), min, max, samples.

    'Loaded' starts at the first listing where the deployment holds memory (plus `settle_s`); 'before any load'
    is before the first load point starts. A deployment first listed after that (an Ollama model loaded by the
    first request) is taken outside every load point instead. Listings where it holds none (an Ollama model
    unloaded by keep_alive) are left out, so this is the footprint while loaded. What an engine takes beyond it
    under load, and keeps (host RSS grows as pages are first touched; SGLang and vLLM take working memory), is
    in `peaks` and `memory_under_load`.
    """
    memory = deployment_memory(samples)
    memory = memory[(memory["deployment"] != UNATTRIBUTED) & (memory["used_mib"] > 0)]
    if memory.empty:
        return pd.DataFrame(columns=["deployment", "idle_mib", "min_mib", "max_mib", "samples", "loaded_ns"])
    loaded = memory.groupby("deployment")["t_ns"].min().rename("loaded_ns")
    memory = memory.join(loaded, on="deployment")
    memory = memory[memory["t_ns"] >= memory["loaded_ns"] + int(settle_s * 1e9)]
    memory = memory[_outside(memory["t_ns"], points, int(samples["t_ns"].max()))]
    if points is not None and not points.empty:
        before_load = memory[memory["t_ns"] < points["start_ns"].min()]
        memory = pd.concat([before_load, memory[~memory["deployment"].isin(before_load["deployment"])]])
    table = memory.groupby("deployment").agg(
        idle_mib=("used_mib", "median"), min_mib=("used_mib", "min"), max_mib=("used_mib", "max"), samples=("used_mib", "size")
    )
    return table.join(loaded).reset_index()


def memory_under_load(samples: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Per load point (start_ns..end_ns) and deployment, plus DEVICE: mean_mib, peak_mib, samples.

    Every deployment is reported for every point, not only the one under load: co-located models are the point.
    Points without an end (aborted) are skipped.
    """
    memory = deployment_memory(samples)
    device = _device(samples)[["t_ns", "used_mib"]].assign(deployment=DEVICE)
    both = pd.concat([memory[["t_ns", "deployment", "used_mib"]], device], ignore_index=True)
    tables = []
    for point in points.dropna(subset=["end_ns"]).itertuples(index=False):
        inside = both[both["t_ns"].between(point.start_ns, point.end_ns)]
        if inside.empty:
            continue
        table = inside.groupby("deployment")["used_mib"].agg(mean_mib="mean", peak_mib="max", samples="size").reset_index()
        table.insert(0, "point_id", point.point_id)
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=["point_id", "deployment", "mean_mib", "peak_mib", "samples"])
    return pd.concat(tables, ignore_index=True)


def peaks(samples: pd.DataFrame) -> pd.DataFrame:
    """Per deployment (and UNATTRIBUTED, DEVICE): the highest used_mib and when (peak_t_ns)."""
    memory = deployment_memory(samples)[["t_ns", "deployment", "used_mib"]]
    device = _device(samples)[["t_ns", "used_mib"]].assign(deployment=DEVICE)
    both = pd.concat([memory, device], ignore_index=True).dropna(subset=["used_mib"])
    if both.empty:
        return pd.DataFrame(columns=["deployment", "peak_mib", "peak_t_ns"])
    top = both.loc[both.groupby("deployment")["used_mib"].idxmax()]
    return top.rename(columns={"used_mib": "peak_mib", "t_ns": "peak_t_ns"})[["deployment", "peak_mib", "peak_t_ns"]].reset_index(drop=True)


def load_events(samples: pd.DataFrame, min_mib: float = 1.0) -> pd.DataFrame:
    """When each process's memory appears ('load') or disappears ('unload'), e.g. Ollama's keep_alive unloads.

    A process is present at a listing when it is listed with at least `min_mib` (or with memory NVML does not
    report). One present at the first listing is reported as 'present' (loaded before sampling began). For an
    unload, used_mib is the last memory seen.
    """
    times = listing_times(samples)
    rows = _process_rows(samples)
    present_rows = rows[rows["used_mib"].isna() | (rows["used_mib"] >= min_mib)]
    columns = ["t_ns", "deployment", "pid", "event", "used_mib"]
    if present_rows.empty:
        return pd.DataFrame(columns=columns)
    present = pd.crosstab(present_rows["t_ns"], present_rows["pid"]).gt(0).reindex(times, fill_value=False)
    used = rows.pivot_table(index="t_ns", columns="pid", values="used_mib", aggfunc="last").reindex(times).ffill()
    owner = rows.dropna(subset=["deployment"]).groupby("pid")["deployment"].last()
    events = []
    for pid in present.columns:
        column = present[pid].to_numpy()
        for i in np.flatnonzero(column != np.concatenate(([False], column[:-1]))).tolist():
            if column[i]:
                kind, mib = ("present" if i == 0 else "load"), _at(used, pid, i)
            else:
                kind, mib = "unload", _at(used, pid, i - 1)
            events.append((int(times[i]), owner.get(pid, UNATTRIBUTED), int(pid), kind, mib))
    frame = pd.DataFrame(events, columns=columns)
    return frame.sort_values(["t_ns", "pid"], kind="stable").reset_index(drop=True)


def _at(table: pd.DataFrame, column: object, row: int) -> float:
    return float(table[column].iloc[row]) if column in table else float("nan")


# ----------------------------------------------------------------------------------------------- per GPU
def devices(samples: pd.DataFrame) -> list[int]:
    """The GPUs the samples hold, by NVML index, ascending; [] for host samples."""
    return sorted(int(i) for i in samples["device_index"].dropna().unique())


def on_device(samples: pd.DataFrame, device_index: int) -> pd.DataFrame:
    """The rows of one GPU: its device rows and its process listings."""
    return samples[samples["device_index"] == device_index].reset_index(drop=True)


def by_device(table: Callable[..., pd.DataFrame], samples: pd.DataFrame, *args: Any, **kwargs: Any) -> pd.DataFrame:
    """`table` (any function of this module over samples) computed for each GPU on its own, with a device_index
    column first; host samples (no GPU) give `table` over all of them, device_index empty."""
    indices = devices(samples)
    if not indices:
        return table(samples, *args, **kwargs).assign(device_index=pd.NA).pipe(_device_first)
    tables = [table(on_device(samples, index), *args, **kwargs).assign(device_index=index) for index in indices]
    return _device_first(pd.concat(tables, ignore_index=True))


def _device_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["device_index", *[c for c in frame.columns if c != "device_index"]]]


def peaks_by_device(samples: pd.DataFrame) -> pd.DataFrame:
    """Per GPU and deployment (and UNATTRIBUTED, DEVICE): the highest used_mib on that GPU and when, with the
    GPU's total_mib. A model split over GPUs has a row on each; `peaks` gives its total."""
    table = by_device(peaks, samples)
    totals = samples[samples["scope"] == "device"].groupby("device_index")["total_mib"].max()
    return table.assign(total_mib=table["device_index"].map(totals).astype(float))


def idle_by_device(samples: pd.DataFrame, points: pd.DataFrame | None = None, settle_s: float = 0.0) -> pd.DataFrame:
    """`idle_footprint` for each GPU on its own: what each deployment holds on each GPU once loaded."""
    return by_device(idle_footprint, samples, points, settle_s)
