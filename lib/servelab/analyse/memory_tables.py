"""The tables and sentences of the memory notebook, composed from `servelab.observe` analysis and the planner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from servelab.analyse.metrics import percent_off
from servelab.observe import (
    DEVICE,
    UNATTRIBUTED,
    attribution_gap,
    baseline_used_mib,
    energy_per_deployment,
    idle_by_device,
    idle_footprint,
    memory_under_load,
    on_device,
    peaks,
    peaks_by_device,
)
from servelab.params import Params
from servelab.records import LOADED_MODELS_FILE, read_jsonl
from servelab.serve.planner import plan, seed_formula_mib


def _source(samples: pd.DataFrame) -> str:
    return str(samples["source"].iloc[0]) if not samples.empty else "none"


def source_sentence(samples: pd.DataFrame) -> str:
    source = _source(samples)
    if source == "nvml":
        return "Memory source: NVML (GPU memory of the device and of each process)."
    if source == "host_rss":
        return (
            "Memory source: HOST RSS of each engine's processes. This machine has no GPU (no NVML), so every "
            "figure below is host memory, not GPU memory."
        )
    return "No memory samples in this run."


def phases(samples: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Per deployment: idle footprint once loaded, mean and peak under its own load points, overall peak (MiB)."""
    if samples.empty:
        return pd.DataFrame({"note": ["no samples"]})
    idle = idle_footprint(samples, points).set_index("deployment")[["idle_mib"]]
    top = peaks(samples).set_index("deployment")[["peak_mib"]]
    table = idle.join(top, how="outer")
    if not points.empty:
        under = memory_under_load(samples, points)
        if not under.empty:
            owner = points.set_index("point_id")["deployment"]
            own = under[under["deployment"] == under["point_id"].map(owner)]
            table = table.join(own.groupby("deployment")["mean_mib"].mean().rename("under_load_mean_mib"), how="outer")
    table = table.drop(index=[DEVICE], errors="ignore").round(1)
    table.columns = [f"{column} ({_unit(samples)})" for column in table.columns]
    return table


def _unit(samples: pd.DataFrame) -> str:
    return "GPU" if _source(samples) == "nvml" else "host RSS"


def _measured_mib(samples: pd.DataFrame, points: pd.DataFrame | None) -> pd.Series:
    """Each deployment's idle footprint, as in `phases`: once loaded and before any load."""
    idle = idle_footprint(samples, points)
    return idle.set_index("deployment")["idle_mib"] if not idle.empty else pd.Series(dtype=float)


def _total_mib(samples: pd.DataFrame) -> float | None:
    device = samples[samples["scope"] == "device"]["total_mib"].dropna()
    return float(device.iloc[0]) if not device.empty else None


def planner_comparison(params: Params, samples: pd.DataFrame, points: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per deployment, in start order: the planner's prediction against the measured idle footprint and against
    the peak under load, and the seed's formula (weights + available x utilization + overhead) for vLLM.

    Both matter to whoever co-locates: the idle footprint is what each framework reserves; the peak is what the
    next model must leave room for (SGLang and vLLM both allocate some working memory beyond it under load).

    Where deployments held memory on more than one GPU, the table is per GPU instead (`device_index` first):
    see `planner_comparison_by_device`."""
    if _source(samples) == "nvml" and len(_held(peaks_by_device(samples))) > 1:
        return planner_comparison_by_device(params, samples, points)
    measured = _measured_mib(samples, points)
    top = peaks(samples).set_index("deployment")["peak_mib"]
    total = _total_mib(samples)
    on_gpu = _source(samples) == "nvml" and total is not None
    # Without a GPU the host's memory stands in for the size: only host-side (llama.cpp) predictions are compared.
    prediction = plan(params, total_mib=total if on_gpu else 1.0, reserve_mib=0.0)
    available = total - baseline_used_mib(samples) if on_gpu else None
    rows = []
    for footprint in prediction.footprints:
        if footprint.memory not in ("gpu", "host") or (footprint.memory == "gpu") != on_gpu:  # 'elsewhere': not predicted
            continue
        got = measured.get(footprint.deployment)
        peak = top.get(footprint.deployment)
        row = {
            "deployment": footprint.deployment,
            "memory": footprint.memory,
            "formula": footprint.formula,
            "predicted_mib": round(footprint.predicted_mib, 1),
            "measured_mib": None if got is None else round(float(got), 1),
            "error_pct": percent_off(footprint.predicted_mib, got),
            "peak_mib": None if peak is None else round(float(peak), 1),
            "peak_error_pct": percent_off(footprint.predicted_mib, peak),
        }
        if footprint.seed_fraction is not None and available is not None and footprint.weights_mib is not None:
            seed = seed_formula_mib(footprint.weights_mib, available, footprint.seed_fraction, footprint.overhead_mib)
            row["seed_formula_mib"] = round(seed, 1)
            row["seed_error_pct"] = percent_off(seed, got)
            available -= got or footprint.predicted_mib
        rows.append(row)
    return pd.DataFrame(rows)


def _held(table: pd.DataFrame) -> dict[int, set[str]]:
    """GPU -> the deployments whose processes held memory on it at some time, from `peaks_by_device`."""
    held = table[(table["peak_mib"] > 0) & ~table["deployment"].isin([DEVICE, UNATTRIBUTED])]
    return {int(index): set(group["deployment"]) for index, group in held.groupby("device_index")}


def _mib(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)  # type: ignore[arg-type]


def planner_comparison_by_device(params: Params, samples: pd.DataFrame, points: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per GPU, and on it per deployment in start order: that GPU's plan (the deployments measured on it, planned
    against its own total) against each deployment's idle footprint and peak on that GPU. A model split over two
    GPUs has a row on each. Which deployment is on which GPU is read from the samples, not the params: under
    `--cluster`, Ray puts a group's `gpus` onto the GPUs it gave, and NVML numbers GPUs as it does."""
    idle = idle_by_device(samples, points).set_index(["device_index", "deployment"])["idle_mib"]
    by_device = peaks_by_device(samples)
    top = by_device.set_index(["device_index", "deployment"])["peak_mib"]
    rows = []
    for index, names in sorted(_held(by_device).items()):
        total = _total_mib(on_device(samples, index))
        deployments = [d for d in params.deployments if d.name in names]
        if total is None or not deployments:
            continue
        for footprint in plan(deployments, total_mib=total, reserve_mib=0.0).footprints:
            if footprint.memory != "gpu":
                continue
            got, peak = (_mib(table.get((index, footprint.deployment))) for table in (idle, top))
            rows.append({
                "device_index": index,
                "deployment": footprint.deployment,
                "memory": footprint.memory,
                "formula": footprint.formula,
                "predicted_mib": round(footprint.predicted_mib, 1),
                "measured_mib": None if got is None else round(got, 1),
                "error_pct": percent_off(footprint.predicted_mib, got),
                "peak_mib": None if peak is None else round(peak, 1),
                "peak_error_pct": percent_off(footprint.predicted_mib, peak),
            })
    return pd.DataFrame(rows)


def planner_sentence(comparison: pd.DataFrame) -> str:
    if comparison.empty or comparison["error_pct"].isna().all():
        return "No deployment could be compared with the planner (no matching measurement)."
    worst = comparison["error_pct"].abs().max()
    per_gpu = " on any one GPU" if "device_index" in comparison else ""
    text = f"The planner's largest error{per_gpu} is {worst:.1f} % of the idle footprint"
    if "peak_error_pct" in comparison and comparison["peak_error_pct"].notna().any():
        text += f" and {comparison['peak_error_pct'].abs().max():.1f} % of the peak under load"
    text += "."
    if "seed_error_pct" in comparison and comparison["seed_error_pct"].notna().any():
        seed_worst = comparison["seed_error_pct"].abs().max()
        verdict = "does not hold" if seed_worst > 3 else "holds"
        text += f" The seed's formula (weights + available x utilization + overhead) is off by up to {seed_worst:.1f} %: it {verdict} here."
    return text


STEADY_MIN_MIB = 1024.0
"""Listings with less than this above the baseline are left out of the check: while a CUDA context is being
made, a few MiB against a gap of a few MiB gives percentages that mean nothing."""


def attribution_check(samples: pd.DataFrame) -> pd.DataFrame:
    """The process memory NVML lists against device used minus the baseline, over the listings that hold at least
    STEADY_MIN_MIB; and how much of the listed memory belongs to no deployment."""
    if _source(samples) != "nvml":
        return pd.DataFrame({"note": ["needs NVML: without a GPU there is no device total to check against"]})
    gap = attribution_gap(samples).dropna(subset=["gap_pct"])
    loaded = gap[(gap["device_used_mib"] - gap["baseline_mib"]) >= STEADY_MIN_MIB]
    if loaded.empty:
        return pd.DataFrame({"note": [f"no listing with {STEADY_MIN_MIB:.0f} MiB or more above the baseline"]})
    absolute = loaded["gap_pct"].abs()
    peak = loaded.loc[loaded["device_used_mib"].idxmax()]
    return pd.DataFrame(
        {
            "baseline_mib": [round(float(loaded["baseline_mib"].iloc[0]), 1)],
            "listings": [len(loaded)],
            "median_gap_pct": [round(float(loaded["gap_pct"].median()), 3)],
            "p95_abs_gap_pct": [round(float(absolute.quantile(0.95)), 3)],
            "max_abs_gap_pct": [round(float(absolute.max()), 3)],
            "within_1pct_share": [round(float((absolute <= 1.0).mean()), 4)],
            "at_peak_listed_mib": [round(float(peak["listed_mib"]), 1)],
            "at_peak_device_minus_baseline_mib": [round(float(peak["device_used_mib"] - peak["baseline_mib"]), 1)],
            "unattributed_share_pct": [round(float(100 * loaded["unattributed_mib"].sum() / loaded["listed_mib"].sum()), 3)],
        }
    )


def energy(samples: pd.DataFrame) -> pd.DataFrame:
    if _source(samples) != "nvml":
        return pd.DataFrame({"note": ["needs NVML's energy counter: not available without a GPU"]})
    return energy_per_deployment(samples)


def endpoint_memory(engines: dict, samples: pd.DataFrame, points: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per server that ran already (kind endpoint, `started: False` in the manifest's engines): the process its
    memory was measured for, found through its port, with its idle and peak memory; or 'not measured: remote
    endpoint', with no figure (never a zero)."""
    measured = _measured_mib(samples, points) if not samples.empty else pd.Series(dtype=float)
    top = peaks(samples).set_index("deployment")["peak_mib"] if not samples.empty else pd.Series(dtype=float)
    rows = []
    for name, engine in engines.items():
        if engine.get("started", True):
            continue
        idle, peak = measured.get(name), top.get(name)
        found = idle is not None or peak is not None
        rows.append({
            "deployment": name,
            "memory": ("gpu" if _source(samples) == "nvml" else "host") if found else "not measured",
            "process": engine.get("memory") or "not measured: remote endpoint",
            "measured_mib": None if idle is None else round(float(idle), 1),
            "peak_mib": None if peak is None else round(float(peak), 1),
        })
    return pd.DataFrame(rows)


def loaded_models_frame(run_dir: Path) -> pd.DataFrame:
    """`loaded_models.jsonl`: the models each server said it held at the end of each load point (Ollama's /api/ps)."""
    return pd.DataFrame(list(read_jsonl(run_dir / LOADED_MODELS_FILE)))


def loaded_models(run_dir: Path, samples: pd.DataFrame) -> pd.DataFrame:
    """Ollama's own account of the models it held at each load point (`ollama_checks`), or a note where no server
    of the run lists its models."""
    table = ollama_checks(loaded_models_frame(run_dir), samples)
    if table.empty:
        return pd.DataFrame({"note": ["no server in this run lists the models it holds (Ollama's /api/ps)"]})
    return table.set_index(["point_id", "model"])


def ollama_checks(loaded: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """At each load point, the models an Ollama server held by its own /api/ps (`loaded_models.jsonl`): size, the
    part on the GPU, whether some spilled to host memory, and, with NVML samples, `ollama_cross_check` of the
    reported GPU memory against what NVML measured for that server's processes at that moment."""
    from servelab.observe import ollama_cross_check

    if loaded.empty:
        return pd.DataFrame()
    rows = []
    process = samples[samples["scope"] == "process"] if not samples.empty else samples
    on_gpu = _source(samples) == "nvml"
    for (point_id, deployment), group in loaded.groupby(["point_id", "deployment"], sort=False):
        t_ns = int(group["t_ns"].iloc[0])
        measured = None
        if on_gpu and not process.empty:
            own = process[process["deployment"] == deployment]
            if not own.empty:
                nearest = own.loc[(own["t_ns"] - t_ns).abs().idxmin(), "t_ns"]
                measured = float(own[own["t_ns"] == nearest]["used_mib"].sum())
        ps = {"models": [{"name": m, "size_vram": v * 1024 * 1024} for m, v in zip(group["model"], group["vram_mib"], strict=True)]}
        check = ollama_cross_check(ps, measured) if measured is not None else None
        for row in group.itertuples():
            rows.append({
                "point_id": point_id, "deployment": deployment, "model": row.model, "size_mib": row.size_mib,
                "vram_mib": row.vram_mib, "on_gpu_pct": round(100 * row.vram_mib / row.size_mib, 1) if row.size_mib else None,
                "spilled_to_cpu": bool(row.spilled),
                "server_reported_vram_mib": None if check is None else round(check.reported_mib, 1),
                "nvml_measured_mib": None if check is None else round(check.measured_mib, 1),
            })
    return pd.DataFrame(rows)


def spill_warnings(loaded: pd.DataFrame) -> list[str]:
    """One sentence per model that Ollama kept partly in host memory at some load point."""
    if loaded.empty or not loaded["spilled"].any():
        return []
    notes = []
    for model, group in loaded[loaded["spilled"].astype(bool)].groupby("model", sort=False):
        worst = group.loc[(group["vram_mib"] / group["size_mib"]).idxmin()]
        users = sorted(set(group.get("served_for", pd.Series(dtype=object)).dropna()))
        served = f" (served for {', '.join(users)})" if users else ""
        notes.append(
            f"{model}{served} spilled to the CPU at {group['point_id'].nunique()} load point(s): at worst "
            f"{worst['vram_mib']:,.0f} of its {worst['size_mib']:,.0f} MiB were on the GPU (Ollama's /api/ps), so part of "
            f"it ran on the CPU and its speed is not the GPU's."
        )
    return notes
