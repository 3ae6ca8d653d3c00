"""Figures for the notebooks and the report. Each takes tidy frames and returns a matplotlib Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

sns.set_theme(style="whitegrid", context="notebook")


def _value(summary: pd.DataFrame, metric: str, stat: str | None = None) -> pd.DataFrame:
    rows = summary[summary["metric"] == metric]
    if stat is not None:
        rows = rows[rows["stat"] == stat]
    return rows


def _empty(message: str) -> Figure:
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center")
    return figure


def _series_label(frame: pd.DataFrame) -> pd.Series:
    together = frame.get("interference", pd.Series(False, index=frame.index)).fillna(False).astype(bool)
    return frame["deployment"] + together.map({True: " (all under load)", False: ""})


def throughput(summary: pd.DataFrame, metric: str = "output_tok_s") -> Figure:
    """Output tokens/s against the load value, one line per deployment, one panel per language."""
    rows = _value(summary, metric).copy()
    if rows.empty:
        return _empty("no throughput measured yet")
    rows["series"] = _series_label(rows)
    grid = sns.relplot(
        data=rows, x="load_value", y="value", hue="series", style="framework", col="language",
        kind="line", marker="o", height=3.4, aspect=1.2, facet_kws={"sharey": False},
    )
    grid.set_axis_labels(_load_axis(rows), "output tokens/s")
    grid.figure.suptitle("Throughput against load", y=1.03)
    return grid.figure


def _load_axis(rows: pd.DataFrame) -> str:
    kinds = set(rows["load_kind"])
    return "concurrency" if kinds == {"concurrency"} else "load (concurrency or req/s)"


def latency_percentiles(summary: pd.DataFrame, metrics: tuple[str, ...] = ("ttft_ms", "tpot_ms", "itl_ms")) -> Figure:
    """p50, p90 and p99 of TTFT, TPOT and ITL against the load value, per deployment."""
    rows = summary[summary["metric"].isin(metrics) & summary["stat"].isin(["p50", "p90", "p99"])].copy()
    if rows.empty:
        return _empty("no latency measured yet")
    rows["series"] = _series_label(rows)
    grid = sns.relplot(
        data=rows, x="load_value", y="value", hue="series", style="stat", col="metric", kind="line",
        marker="o", height=3.2, aspect=1.1, facet_kws={"sharey": False}, errorbar=None,
    )
    grid.set_axis_labels(_load_axis(rows), "milliseconds")
    grid.figure.suptitle("Latency percentiles against load (all languages pooled per point)", y=1.03)
    return grid.figure


def ttft_cdf(requests: pd.DataFrame) -> Figure:
    """The empirical CDF of TTFT per deployment, over every successful measured request."""
    rows = requests[requests["ok"] & ~requests["warmup"]]
    if rows.empty:
        return _empty("no successful requests yet")
    figure, axis = plt.subplots(figsize=(7, 3.6))
    sns.ecdfplot(data=rows, x="ttft_ms", hue="deployment", ax=axis)
    axis.set_xlabel("time to first token, ms")
    axis.set_ylabel("share of requests")
    axis.set_title("TTFT distribution")
    return figure


def languages(requests: pd.DataFrame) -> Figure:
    """Per language: prompt tokens per character (tokenizer efficiency) and per-request output tokens/s."""
    rows = requests[requests["ok"] & ~requests["warmup"]].copy()
    if rows.empty:
        return _empty("no successful requests yet")
    rows["tokens_per_char"] = rows["prompt_tokens"] / rows["prompt_chars"].where(rows["prompt_chars"] > 0)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    sns.barplot(data=rows, x="language", y="tokens_per_char", hue="deployment", ax=axes[0], errorbar=None)
    axes[0].set_title("Prompt tokens per character")
    axes[0].set_ylabel("tokens / character")
    sns.barplot(data=rows, x="language", y="request_tok_s", hue="deployment", ax=axes[1], errorbar=("ci", 95))
    axes[1].set_title("Decode speed per request")
    axes[1].set_ylabel("output tokens/s per request")
    figure.tight_layout()
    return figure


def memory_timeline(samples: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """Memory of each deployment's processes stacked over time, with load points shaded."""
    rows = samples[(samples["scope"] == "process") & samples["pid"].notna() & samples["used_mib"].notna()].copy()
    if rows.empty:
        return _empty("no per-process memory samples")
    source = rows["source"].iloc[0]
    rows["deployment"] = rows["deployment"].fillna("other processes")
    start = samples["t_ns"].min()
    # One column per listing (its exact t_ns): rounding times first would add two listings that fall in one bin.
    wide = rows.groupby(["t_ns", "deployment"])["used_mib"].sum().unstack(fill_value=0.0).sort_index()
    wide.index = (wide.index - start) / 1e9
    figure, axis = plt.subplots(figsize=(10, 3.8))
    axis.stackplot(wide.index, wide.T.values, labels=wide.columns, alpha=0.85)
    device = samples[samples["scope"] == "device"]
    if not device.empty:
        total_label = "device used (all processes)" if source == "nvml" else "host memory used (all processes)"
        axis.plot((device["t_ns"] - start) / 1e9, device["used_mib"], color="black", lw=1, label=total_label)
    if points is not None and not points.empty:
        for _, point in points.iterrows():
            if pd.notna(point.get("end_ns")):
                axis.axvspan((point["start_ns"] - start) / 1e9, (point["end_ns"] - start) / 1e9, color="grey", alpha=0.08)
    axis.set_xlabel("seconds since the run started")
    label = "GPU memory (NVML), MiB" if source == "nvml" else "HOST memory (RSS), MiB - no GPU"
    axis.set_ylabel(label)
    axis.set_title("Memory per model over time" + ("" if source == "nvml" else " (host RSS fallback, not GPU memory)"))
    axis.legend(loc="upper left", fontsize="small")
    return figure


def planner_vs_measured(comparison: pd.DataFrame) -> Figure:
    """Predicted against measured memory per deployment: `comparison` from memory_report.planner_comparison
    (predicted_mib, measured_mib: idle, and peak_mib where there is one)."""
    if comparison.empty:
        return _empty("nothing to compare")
    names = {"predicted_mib": "planner", "measured_mib": "idle", "peak_mib": "peak under load"}
    present = [column for column in names if column in comparison and comparison[column].notna().any()]
    long = comparison.rename(columns=names).melt(
        id_vars=["deployment"], value_vars=[names[c] for c in present], var_name="what", value_name="mib"
    )
    figure, axis = plt.subplots(figsize=(7, 3.4))
    sns.barplot(data=long, x="deployment", y="mib", hue="what", ax=axis)
    axis.set_ylabel("MiB")
    axis.set_title("Memory planner against measurement")
    return figure


def agreement_turns(turns: pd.DataFrame) -> Figure:
    """Each client's output tok/s at each of its turns against `vllm bench serve`, in the order the turns ran, one
    panel per concurrency (and a row per mode where both ran): how far the engine's own speed moved between
    windows, next to how far the clients differ."""
    if turns.empty:
        return _empty("no comparison with vllm bench serve in this run")
    rows = "mode" if "mode" in turns.columns and turns["mode"].nunique() > 1 else None
    grid = sns.relplot(
        data=turns, x="turn", y="output_tok_s", hue="client", style="client", col="concurrency", row=rows,
        kind="scatter", s=60, height=3.0, aspect=1.1, facet_kws={"sharey": False, "sharex": False},
    )
    grid.set_axis_labels("turn (in the order run)", "output tokens/s")
    for axis in grid.axes.flat:
        axis.set_visible(bool(axis.collections))  # a mode without that concurrency (no shared turns at c=1)
    grid.figure.suptitle("Each turn of the comparison: servelab and vllm bench serve on the same server", y=1.04)
    return grid.figure
