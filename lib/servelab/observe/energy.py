"""Energy per model: the device's energy over each sampling interval, split among the deployments running then.

The device's energy comes from NVML's total-energy counter (mJ since the driver loaded), differenced between
consecutive device rows; without the counter, from power integrated by the trapezoid rule. Each interval's
energy is split among deployments by their share of the SM utilization NVML reports per process
(`nvmlDeviceGetProcessUtilization`, the process rows' `utilization_pct`) at the first listing at or before
the interval's end; where that is unknown or all zero (every model idle), by their share of memory. Energy
in intervals with no process on the device goes to `NO_PROCESS`. With several GPUs, each GPU's energy is split
among the processes on that GPU, and the joules are summed per deployment. Methods: docs/memory.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from servelab.observe.memory import NO_PROCESS, _device, _process_rows, devices, on_device

COLUMNS = ["deployment", "energy_j", "share_pct", "method", "utilization_split_j", "memory_split_j", "energy_source"]


def device_energy_intervals(samples: pd.DataFrame, start_ns: int | None = None, end_ns: int | None = None) -> pd.DataFrame:
    """The device's energy per sampling interval: end_ns, energy_j, and energy_source ('counter' or 'power')."""
    device = _device(samples)
    if start_ns is not None:
        device = device[device["t_ns"] >= start_ns]
    if end_ns is not None:
        device = device[device["t_ns"] <= end_ns]
    counter = device.dropna(subset=["energy_mj"])
    if len(counter) >= 2:
        energy_j = counter["energy_mj"].diff().to_numpy()[1:] / 1000.0
        frame = pd.DataFrame({"end_ns": counter["t_ns"].to_numpy()[1:], "energy_j": energy_j, "energy_source": "counter"})
        return frame[frame["energy_j"] >= 0].reset_index(drop=True)  # a negative step is a driver reload
    power = device.dropna(subset=["power_w"])
    if len(power) >= 2:
        watts = power["power_w"].to_numpy()
        seconds = np.diff(power["t_ns"].to_numpy()) / 1e9
        return pd.DataFrame(
            {"end_ns": power["t_ns"].to_numpy()[1:], "energy_j": (watts[1:] + watts[:-1]) / 2 * seconds, "energy_source": "power"}
        )
    return pd.DataFrame({"end_ns": pd.Series(dtype="int64"), "energy_j": pd.Series(dtype=float), "energy_source": pd.Series(dtype=str)})


def _weights(samples: pd.DataFrame) -> pd.DataFrame:
    """Per listing and deployment: the weight of its share and the method that gave it."""
    rows = _process_rows(samples)
    per = rows.groupby(["t_ns", "label"]).agg(
        utilization=("utilization_pct", lambda values: values.sum(min_count=1)), memory=("used_mib", "sum")
    ).reset_index()
    per["utilization_total"] = per.groupby("t_ns")["utilization"].transform("sum")
    per["memory_total"] = per.groupby("t_ns")["memory"].transform("sum")
    by_utilization = per["utilization_total"] > 0
    per["method"] = np.where(by_utilization, "utilization", np.where(per["memory_total"] > 0, "memory", "none"))
    per["weight"] = np.where(
        by_utilization,
        per["utilization"].fillna(0) / per["utilization_total"].where(by_utilization, 1.0),
        per["memory"] / per["memory_total"].where(per["memory_total"] > 0, 1.0),
    )
    return per[per["method"] != "none"][["t_ns", "label", "weight", "method"]]


def energy_per_deployment(samples: pd.DataFrame, start_ns: int | None = None, end_ns: int | None = None) -> pd.DataFrame:
    """Joules per deployment between start_ns and end_ns, with the split method, its parts and the energy source.

    method is 'utilization', 'memory' or 'utilization+memory' (some intervals each way); utilization_split_j and
    memory_split_j are the joules split each way; share_pct is of the device's energy in the window.
    """
    if len(devices(samples)) > 1:
        return _summed([energy_per_deployment(on_device(samples, index), start_ns, end_ns) for index in devices(samples)])
    intervals = device_energy_intervals(samples, start_ns, end_ns)
    if intervals.empty:
        return pd.DataFrame(columns=COLUMNS)
    weights = _weights(samples)
    listings = pd.DataFrame({"t_ns": np.sort(samples.loc[samples["scope"] == "process", "t_ns"].unique()).astype("int64")})
    intervals = intervals.assign(end_ns=intervals["end_ns"].astype("int64")).sort_values("end_ns")
    matched = pd.merge_asof(intervals, listings, left_on="end_ns", right_on="t_ns", direction="backward")
    split = matched.merge(weights, on="t_ns", how="left")
    split["label"] = split["label"].fillna(NO_PROCESS)
    split["method"] = split["method"].fillna("none")
    split["joules"] = split["energy_j"] * split["weight"].fillna(1.0)
    by_method = split.pivot_table(index="label", columns="method", values="joules", aggfunc="sum", fill_value=0.0)
    table = pd.DataFrame(index=by_method.index)
    table["utilization_split_j"] = by_method.get("utilization", 0.0)
    table["memory_split_j"] = by_method.get("memory", 0.0)
    table["energy_j"] = by_method.sum(axis=1)
    table["share_pct"] = 100.0 * table["energy_j"] / intervals["energy_j"].sum() if intervals["energy_j"].sum() > 0 else np.nan
    table["method"] = [
        _method_name(row.utilization_split_j, row.memory_split_j, label == NO_PROCESS)
        for label, row in table.iterrows()
    ]
    table["energy_source"] = "+".join(sorted(intervals["energy_source"].unique()))
    return table.rename_axis("deployment").reset_index()[COLUMNS]


def _method_name(by_utilization: float, by_memory: float, unowned: bool) -> str:
    if unowned:
        return "none"
    if by_utilization > 0 and by_memory > 0:
        return "utilization+memory"
    return "utilization" if by_utilization > 0 else "memory"


def _summed(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-GPU energy tables as one: joules summed per deployment, shares of all the GPUs' energy together."""
    tables = [table for table in tables if not table.empty]
    if not tables:
        return pd.DataFrame(columns=COLUMNS)
    both = pd.concat(tables, ignore_index=True)
    table = both.groupby("deployment")[["energy_j", "utilization_split_j", "memory_split_j"]].sum()
    total = table["energy_j"].sum()
    table["share_pct"] = 100.0 * table["energy_j"] / total if total > 0 else np.nan
    table["method"] = [
        _method_name(row.utilization_split_j, row.memory_split_j, label == NO_PROCESS) for label, row in table.iterrows()
    ]
    table["energy_source"] = "+".join(sorted({part for source in both["energy_source"] for part in source.split("+")}))
    return table.reset_index()[COLUMNS]
