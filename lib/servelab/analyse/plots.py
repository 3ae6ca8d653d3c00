"""Figures for the notebooks and the report. Each takes tidy frames and returns a `Chart`: the matplotlib figure
with its alt text and caption, shown as an inline PNG whatever matplotlib's backend (Agg included)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from servelab.observe.memory import NO_PROCESS, UNATTRIBUTED, timeline

sns.set_theme(style="whitegrid", context="notebook")

CHART_CLASS = "servelab-chart"
"""The class of every chart's <figure> in HTML; the report's export counts them to refuse a missing figure."""


@dataclass
class Chart:
    """A figure, its alt text (what it shows, in words) and its caption. Rendered to PNG when made, and closed, so
    that no backend shows it a second time or drops it: Jupyter displays the chart through `_repr_html_`."""

    figure: Figure
    alt: str
    caption: str
    png: bytes = b""

    def __post_init__(self) -> None:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        self.png = buffer.getvalue()
        plt.close(self.figure)

    def __getattr__(self, name: str) -> Any:
        # `chart.axes` and the like reach the figure, so a chart reads as the Figure it wraps.
        return getattr(self.figure, name)

    def _repr_html_(self) -> str:
        source = base64.b64encode(self.png).decode("ascii")
        return (
            f'<figure class="{CHART_CLASS}"><img src="data:image/png;base64,{source}" alt="{html.escape(self.alt)}">'
            f"<figcaption>{html.escape(self.caption)}</figcaption></figure>"
        )

    def __repr__(self) -> str:
        return f"Chart({self.alt!r})"


def _names(values: pd.Series) -> str:
    return ", ".join(map(str, dict.fromkeys(values.dropna())))


def _value(summary: pd.DataFrame, metric: str, stat: str | None = None) -> pd.DataFrame:
    rows = summary[summary["metric"] == metric].dropna(subset=["value"])
    if stat is not None:
        rows = rows[rows["stat"] == stat]
    return rows


def _empty(message: str) -> Chart:
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center")
    return Chart(figure, alt=f"An empty chart: {message}.", caption=message)


def _series_label(frame: pd.DataFrame) -> pd.Series:
    together = frame.get("interference", pd.Series(False, index=frame.index)).fillna(False).astype(bool)
    return frame["deployment"] + together.map({True: " (all under load)", False: ""})


def throughput(summary: pd.DataFrame, metric: str = "output_tok_s") -> Chart:
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
    _whole_load_ticks(grid.axes, rows)
    grid.figure.suptitle("Throughput against load", y=1.03)
    best = rows.loc[rows["value"].idxmax()]
    alt = (
        f"Line charts of output tokens per second against {_load_axis(rows)}, one panel per language "
        f"({_names(rows['language'])}), one line per deployment ({_names(rows['series'])}). The highest is "
        f"{best['value']:,.0f} tok/s, {best['series']} in {best['language']} at {best['load_value']:g}."
    )
    caption = "Output tokens/s at each load point. Where a line flattens, more load only adds queueing."
    return Chart(grid.figure, alt, caption)


def _whole_load_ticks(axes: object, rows: pd.DataFrame) -> None:
    """Concurrency is a whole number: ticks at 1, 2, 4, never at 1.25."""
    if set(rows["load_kind"]) == {"concurrency"}:
        for axis in np.asarray(axes).flat:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _load_axis(rows: pd.DataFrame) -> str:
    kinds = set(rows["load_kind"])
    return "concurrency" if kinds == {"concurrency"} else "load (concurrency or req/s)"


def latency_percentiles(summary: pd.DataFrame, metrics: tuple[str, ...] = ("ttft_ms", "tpot_ms", "itl_ms")) -> Chart:
    """p50, p90 and p99 of TTFT, TPOT and ITL against the load value, per deployment."""
    rows = summary[summary["metric"].isin(metrics) & summary["stat"].isin(["p50", "p90", "p99"])].dropna(subset=["value"])
    if rows.empty:
        return _empty("no latency measured yet")
    rows["series"] = _series_label(rows)
    grid = sns.relplot(
        data=rows, x="load_value", y="value", hue="series", style="stat", col="metric", kind="line",
        marker="o", height=3.2, aspect=1.1, facet_kws={"sharey": False}, errorbar=None,
    )
    grid.set_axis_labels(_load_axis(rows), "milliseconds")
    _whole_load_ticks(grid.axes, rows)
    grid.figure.suptitle("Latency percentiles against load (all languages pooled per point)", y=1.03)
    alt = (
        f"Line charts of the p50, p90 and p99 of {', '.join(m.removesuffix('_ms').upper() for m in metrics)} in "
        f"milliseconds against {_load_axis(rows)}, one panel per metric, one colour per deployment "
        f"({_names(rows['series'])})."
    )
    caption = "TTFT grows with queueing; TPOT and ITL grow as decoding shares the batch among more sequences."
    return Chart(grid.figure, alt, caption)


def ttft_cdf(requests: pd.DataFrame) -> Chart:
    """The empirical CDF of TTFT per deployment, over every successful measured request."""
    rows = requests[requests["ok"] & ~requests["warmup"]]
    if rows.empty:
        return _empty("no successful requests yet")
    figure, axis = plt.subplots(figsize=(7, 3.6))
    sns.ecdfplot(data=rows, x="ttft_ms", hue="deployment", ax=axis)
    axis.set_xlabel("time to first token, ms")
    axis.set_ylabel("share of requests")
    axis.set_title("TTFT distribution")
    alt = (
        f"Cumulative distribution of time to first token in milliseconds, one line per deployment "
        f"({_names(rows['deployment'])}); the median over all is {rows['ttft_ms'].median():,.1f} ms."
    )
    return Chart(figure, alt, "The whole TTFT distribution, tail included, rather than one percentile.")


def languages(requests: pd.DataFrame) -> Chart:
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
    alt = (
        f"Two bar charts per language ({_names(rows['language'])}) and deployment: prompt tokens per character, "
        f"and the decode speed of each request in output tokens/s with 95 % confidence intervals."
    )
    caption = (
        "The same token count takes fewer characters in languages the tokenizer splits finely; decode speed per "
        "request should not depend on the language."
    )
    return Chart(figure, alt, caption)


def memory_timeline(samples: pd.DataFrame, points: pd.DataFrame | None = None) -> Chart:
    """Memory of each deployment's processes stacked over time (`observe.memory.timeline`), with load points shaded.

    On a GPU the top band is the device's memory that no listed process accounts for, so the stack reaches the
    device's used memory; on the host fallback the host's other memory is left out (it would dwarf the engines)."""
    rows = samples[(samples["scope"] == "process") & samples["pid"].notna() & samples["used_mib"].notna()]
    if rows.empty:
        return _empty("no per-process memory samples")
    source = rows["source"].iloc[0]
    stacked = timeline(samples)
    if source != "nvml":
        stacked = stacked[stacked["deployment"] != NO_PROCESS]
    names = {UNATTRIBUTED: "other processes", NO_PROCESS: "device memory no process lists"}
    # One column per listing (its exact t_ns): rounding times first would add two listings that fall in one bin.
    wide = stacked.pivot_table(index="t_s", columns="deployment", values="used_mib", aggfunc="sum", fill_value=0.0)
    order = [c for c in wide.columns if c not in names] + [c for c in names if c in wide.columns]
    wide = wide[order].rename(columns=names)
    start = samples["t_ns"].min()
    figure, axis = plt.subplots(figsize=(10, 3.8))
    axis.stackplot(wide.index, wide.T.values, labels=wide.columns, alpha=0.85)
    device = samples[samples["scope"] == "device"]
    if source == "nvml" and not device.empty:
        axis.plot((device["t_ns"] - start) / 1e9, device["used_mib"], color="black", lw=1, label="device used (all processes)")
    shaded = 0
    if points is not None and not points.empty:
        for _, point in points.iterrows():
            if pd.notna(point.get("start_ns")) and pd.notna(point.get("end_ns")):
                axis.axvspan((point["start_ns"] - start) / 1e9, (point["end_ns"] - start) / 1e9, color="grey", alpha=0.08)
                shaded += 1
    axis.set_xlabel("seconds since the run started")
    label = "GPU memory (NVML), MiB" if source == "nvml" else "HOST memory (RSS), MiB - no GPU"
    axis.set_ylabel(label)
    axis.set_title("Memory per model over time" + ("" if source == "nvml" else " (host RSS fallback, not GPU memory)"))
    axis.legend(loc="upper left", fontsize="small")
    what = "GPU memory read by NVML" if source == "nvml" else "host RSS (no GPU on this machine)"
    peak = rows.groupby(["t_ns", "deployment"])["used_mib"].sum().groupby("deployment").max()
    peaks_text = "; ".join(f"{name} peaks at {mib:,.0f} MiB" for name, mib in peak.items())
    alt = (
        f"Stacked area chart of {what} in MiB over {wide.index.max():,.0f} seconds, one band per deployment "
        f"({', '.join(map(str, wide.columns))}); {peaks_text}."
    )
    caption = (
        "Each band is one deployment's processes"
        + ("; shaded spans are load points" if shaded else "; this run recorded no load-point times to shade")
        + ". Steps up are model loads, steps down unloads."
    )
    return Chart(figure, alt, caption)


def planner_vs_measured(comparison: pd.DataFrame) -> Chart:
    """Predicted against measured memory per deployment: `comparison` from memory_report.planner_comparison
    (predicted_mib, measured_mib: idle, and peak_mib where there is one)."""
    if comparison.empty:
        return _empty("nothing to compare")
    names = {"predicted_mib": "planner", "measured_mib": "idle", "peak_mib": "peak under load"}
    present = [column for column in names if column in comparison and comparison[column].notna().any()]
    if "device_index" in comparison:  # per GPU: a bar group for each deployment on each GPU
        comparison = comparison.assign(deployment=comparison["deployment"] + " on GPU " + comparison["device_index"].astype(str))
    long = comparison.rename(columns=names).melt(
        id_vars=["deployment"], value_vars=[names[c] for c in present], var_name="what", value_name="mib"
    )
    figure, axis = plt.subplots(figsize=(7, 3.4))
    sns.barplot(data=long, x="deployment", y="mib", hue="what", ax=axis)
    axis.set_ylabel("MiB")
    axis.set_title("Memory planner against measurement")
    alt = (
        f"Bar chart per deployment ({_names(comparison['deployment'])}) of memory in MiB: "
        f"{', '.join(names[c] for c in present)}."
    )
    caption = "The planner's prediction from the params beside the idle footprint and the peak under load."
    return Chart(figure, alt, caption)


def agreement_turns(turns: pd.DataFrame) -> Chart:
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
    alt = (
        f"Scatter charts of output tokens per second at each turn, one panel per concurrency "
        f"({_names(turns['concurrency'].astype(str))}), servelab and vllm bench serve in two colours."
    )
    caption = (
        "Each dot is one client's turn; turns of the same client at the same load show how far the engine's own "
        "speed moved between windows, which bounds how closely two clients measured one after the other can agree."
    )
    return Chart(grid.figure, alt, caption)


def frameworks(table: pd.DataFrame) -> Chart:
    """Best output tok/s of each deployment and run (`checks.compare.framework_table`), one panel per set of equal
    conditions, so that bars of unlike conditions never stand side by side."""
    rows = table.dropna(subset=["best output (tok/s)"]).copy()
    if rows.empty:
        return _empty("no run here recorded a throughput")
    rows["deployment and run"] = rows["deployment"] + " · " + rows["run"]
    sets = list(dict.fromkeys(rows["conditions"]))
    heights = [rows.loc[rows["conditions"] == c, "deployment and run"].nunique() for c in sets]
    figure, axes = plt.subplots(
        len(sets), 1, figsize=(9, 0.45 * sum(heights) + 1.2 * len(sets)), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for axis, condition in zip(axes[:, 0], sets, strict=True):
        part = rows[rows["conditions"] == condition]
        sns.barplot(data=part, x="best output (tok/s)", y="deployment and run", hue="framework", dodge=False, ax=axis)
        axis.set_title(f"conditions {condition}")
        axis.set_xlabel("best output tokens/s")
        axis.set_ylabel("")
    figure.tight_layout()
    best = rows.loc[rows["best output (tok/s)"].idxmax()]
    alt = (
        f"Horizontal bar chart of the best output tokens per second of each deployment and run, coloured by framework "
        f"({_names(rows['framework'])}), one panel per set of conditions ({_names(rows['conditions'])}). The highest is "
        f"{best['deployment']} on {best['framework']} at {best['best output (tok/s)']:,.0f} tok/s."
    )
    caption = "Best output tok/s over each deployment's own load points; panels are sets of equal conditions (table above)."
    return Chart(figure, alt, caption)
