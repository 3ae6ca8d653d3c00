"""The tables of the stakeholder report, each computed from a run's files. Values stay numbers here, with their
unit in the column name; `report.display` formats them for reading."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from servelab.analyse.metrics import error_breakdown
from servelab.manifest import read_manifest, read_params
from servelab.observe.memory import peaks
from servelab.params import Params
from servelab.records import RequestRecord


def run_params(run_dir: Path) -> Params:
    """The params the run was made with, as its manifest recorded them."""
    return read_params(run_dir)


def gpu_text(manifest: dict) -> str:
    gpu = manifest.get("gpu")
    if gpu == "none" or not gpu:
        return "none (CPU machine: memory figures are host RSS, not GPU memory)"
    names = ", ".join(f"{d['name']} ({d['memory_total_mib']:,.0f} MiB)" for d in gpu.get("devices", []))
    return f"{names}; driver {gpu.get('driver')}"


def run_header(run_dir: Path) -> list[tuple[str, str]]:
    """What ran where, as (label, text) pairs: run id, params, git revision, host, GPU, and each engine's version."""
    manifest = read_manifest(run_dir)
    git = manifest.get("git", {})
    host = manifest.get("host", {})
    rows = [
        ("Run", str(manifest.get("run_id"))),
        ("Params", str(manifest.get("params_file"))),
        ("Git", f"{str(git.get('sha', 'unknown'))[:12]}{' (dirty tree)' if git.get('dirty') else ''}"),
        ("Host", f"{host.get('hostname')}, {host.get('cores')} cores, {host.get('memory_gib')} GiB"),
        ("GPU", gpu_text(manifest)),
        ("Started (UTC)", str(manifest.get("clock", {}).get("anchor", {}).get("utc"))),
    ]
    for name, engine in manifest.get("engines", {}).items():
        shape = ", shape only (dummy weights)" if engine.get("shape_only") else ""
        rows.append((f"Engine {name}", f"{engine['version']}, model {engine['model']}{shape}"))
    calibration = manifest.get("calibration")
    if calibration:
        rows.append(("Client ceiling", _calibration_text(calibration)))
    return rows + _cluster_rows(manifest.get("cluster"))


def _cluster_rows(cluster: dict | None) -> list[tuple[str, str]]:
    """Under `--cluster`, one row per co-location group: its deployments, its node and how it ended."""
    if not cluster:
        return []
    rows = []
    for name, group in cluster.get("groups", {}).items():
        node = f"node {group['node_id'][:12]} at {group.get('node_ip')} ({group.get('hostname')})" if group.get("node_id") else "no node"
        status = group["status"] + (f": {group['message']}" if group.get("message") else "")
        rows.append((f"group {name}", f"{', '.join(group['deployments'])} on {node}{_gpus_text(group)}; {status}"))
    return rows


def _gpus_text(group: dict) -> str:
    """`, GPU 1 (params: 0)`: the physical GPUs Ray gave a group, and what its params called them."""
    physical = group.get("ray_gpu_ids") or []
    if not physical:
        return ""
    named = group.get("gpu_map") or {}
    called = f" (params: {', '.join(named)})" if named and list(named) != [str(v) for v in named.values()] else ""
    return f", GPU {', '.join(map(str, physical))}{called}"


def _calibration_text(calibration: dict) -> str:
    parts = []
    for key, unit in (("max_chunks_s", "chunks/s"), ("max_req_s", "req/s")):
        if calibration.get(key):
            parts.append(f"{calibration[key]:,.0f} {unit}")
    cores = calibration.get("cores")
    return ", ".join(parts) + (f" on {cores} core(s)" if cores else "") if parts else "calibrated, no ceiling recorded"


def _pick(summary: pd.DataFrame, metric: str, stat: str) -> pd.DataFrame:
    return summary[(summary["metric"] == metric) & (summary["stat"] == stat)].dropna(subset=["value"])


def _alone(summary: pd.DataFrame) -> pd.DataFrame:
    together = summary.get("interference", pd.Series(False, index=summary.index)).fillna(False).astype(bool)
    return summary[~together]


THROUGHPUTS = {"output_tok_s": "tok/s", "total_tok_s": "tok/s", "req_s": "req/s", "goodput_req_s": "req/s"}
LATENCIES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "E2E"}


def ranking_label(rank_by: str) -> str:
    """The column the ranking sorts on, with its unit."""
    if rank_by in THROUGHPUTS:
        name = {"output_tok_s": "output", "total_tok_s": "total", "req_s": "requests", "goodput_req_s": "goodput"}[rank_by]
        return f"best {name} ({THROUGHPUTS[rank_by]})"
    return f"median {LATENCIES[rank_by]} at lowest load (ms)"


def settings_text(params: Params, deployment: str) -> str:
    """The engine settings a reader must see beside a figure: every engine param the params set, except images."""
    for candidate in params.deployments:
        if candidate.name == deployment:
            engine = candidate.engine.model_dump(exclude_defaults=True)
            shown = {k: v for k, v in engine.items() if k not in ("kind", "image", "python", "binary") and v not in (None, [], (), "")}
            return ", ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, list | tuple) else v}" for k, v in shown.items())
    return ""


def ranking(summary: pd.DataFrame, samples: pd.DataFrame, rank_by: str = "output_tok_s", params: Params | None = None) -> pd.DataFrame:
    """The answer: one row per deployment (its own load points, neighbours idle), ranked by `rank_by`.

    A throughput ranks by its best value over the load points, highest first; a latency by its median at the lowest
    load, lowest first. Beside it: where the best was reached, goodput where SLOs were set, low-load TTFT, success
    and peak memory (`observe.memory.peaks`)."""
    columns = ["rank", "deployment", "framework", "model"]
    if summary.empty or _pick(summary, rank_by, "value" if rank_by in THROUGHPUTS else "p50").empty:
        return pd.DataFrame(columns=columns)
    alone = _alone(summary)
    memory_peaks = peaks(samples).set_index("deployment")["peak_mib"] if not samples.empty else pd.Series(dtype=float)
    source = str(samples["source"].iloc[0]) if not samples.empty else "none"
    memory_label = "peak GPU memory (MiB)" if source == "nvml" else "peak host RSS (MiB)"
    rows = []
    for deployment, frame in alone.groupby("deployment", sort=False):
        row: dict[str, object] = {"deployment": deployment, "framework": frame["framework"].iloc[0], "model": frame["model"].iloc[0]}
        if params is not None:
            row["settings"] = settings_text(params, str(deployment))
        value, load_kind, load_value = _ranked_value(frame, rank_by)
        row[ranking_label(rank_by)] = value
        row["at load"] = load_text(load_kind, load_value)
        throughput = _pick(frame, "output_tok_s", "value")
        if rank_by != "output_tok_s" and not throughput.empty:
            row["best output (tok/s)"] = throughput["value"].max()
        goodput = _pick(frame, "goodput_req_s", "value")
        if rank_by != "goodput_req_s" and not goodput.empty:
            row["best goodput (req/s)"] = goodput["value"].max()
        ttft = _pick(frame, "ttft_ms", "p50")
        lowest = ttft[ttft["load_value"] == ttft["load_value"].min()]
        if rank_by != "ttft_ms":
            row["median TTFT at lowest load (ms)"] = lowest["value"].mean() if not lowest.empty else None
        tpot = _pick(frame, "tpot_ms", "p50")
        if rank_by != "tpot_ms":
            row["median TPOT (ms)"] = tpot["value"].median() if not tpot.empty else None
        success = _pick(frame, "success_rate", "value")
        row["success"] = success["value"].mean() if not success.empty else None
        if source != "none":
            row[memory_label] = memory_peaks.get(deployment)
        rows.append(row)
    table = pd.DataFrame(rows)
    label = ranking_label(rank_by)
    ascending = rank_by in LATENCIES
    table = table.sort_values(label, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    # The figures first, what the deployment is after them: on a phone the answer is what shows without scrolling.
    described = [c for c in ("framework", "model", "settings") if c in table]
    table = table[[c for c in table.columns if c not in described] + described]
    return table.dropna(axis="columns", how="all")


def _ranked_value(frame: pd.DataFrame, rank_by: str) -> tuple[float | None, str | None, float | None]:
    """(value, load kind, load value) of `rank_by` for one deployment: its best throughput, or its median latency
    at the lowest load (the mean over languages there)."""
    if rank_by in THROUGHPUTS:
        rows = _pick(frame, rank_by, "value")
        if rows.empty:
            return None, None, None
        best = rows.loc[rows["value"].idxmax()]
        return float(best["value"]), str(best["load_kind"]), float(best["load_value"])
    rows = _pick(frame, rank_by, "p50")
    if rows.empty:
        return None, None, None
    lowest = rows.loc[rows["load_value"] == rows["load_value"].min()]
    return float(lowest["value"].mean()), str(lowest["load_kind"].iloc[0]), float(lowest["load_value"].iloc[0])


def load_text(load_kind: str | None, value: float | None) -> str:
    """'c = 4' for a concurrency, '5 req/s' for a rate: loads read as 4, not 4.0."""
    if value is None or pd.isna(value):
        return ""
    number = f"{value:g}"
    return f"c\u00a0=\u00a0{number}" if load_kind == "concurrency" else f"{number}\u00a0req/s"


def load_points(summary: pd.DataFrame) -> pd.DataFrame:
    """Every load point in one row: deployment, language, load, throughput, TTFT and TPOT percentiles, success."""
    wanted = [
        ("output_tok_s", "value", "output (tok/s)"),
        ("req_s", "value", "requests (req/s)"),
        ("goodput_req_s", "value", "goodput (req/s)"),
        ("ttft_ms", "p50", "TTFT p50 (ms)"),
        ("ttft_ms", "p99", "TTFT p99 (ms)"),
        ("tpot_ms", "p50", "TPOT p50 (ms)"),
        ("tpot_ms", "p99", "TPOT p99 (ms)"),
        ("success_rate", "value", "success"),
        ("requests", "value", "requests"),
    ]
    if summary.empty:
        return pd.DataFrame()
    parts = []
    for metric, stat, name in wanted:
        rows = summary[(summary["metric"] == metric) & (summary["stat"] == stat)]
        if not rows.empty:  # a run of one load point has one row per metric
            part = rows.set_index("point_id")["value"].rename(name)
            parts.append(part[~part.index.duplicated()])
    if not parts:
        return pd.DataFrame()
    ids = summary.drop_duplicates("point_id").set_index("point_id")
    table = pd.concat(parts, axis=1).reindex(ids.index)
    together = ids.get("interference", pd.Series(False, index=ids.index)).fillna(False).astype(bool)
    table.insert(0, "deployment", ids["deployment"] + together.map({True: " (all under load)", False: ""}))
    table.insert(1, "language", ids["language"])
    table.insert(2, "load", [load_text(k, v) for k, v in zip(ids["load_kind"], ids["load_value"], strict=True)])
    return table.dropna(axis="columns", how="all").reset_index(drop=True)


GROUP_THROUGHPUTS = {"output_tok_s": "output tok/s", "total_tok_s": "total tok/s", "req_s": "req/s"}


def group_throughput(summary: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per co-location group (the deployments' `group`), at each point where its deployments were loaded at once:
    their throughputs summed, each over its own requests' span. Empty unless the params name two groups or more."""
    groups = {d.name: d.group for d in params.deployments if d.group}
    if len(set(groups.values())) < 2 or summary.empty:
        return pd.DataFrame()
    together = summary.get("interference", pd.Series(False, index=summary.index)).fillna(False).astype(bool)
    rows = summary[together & (summary["stat"] == "value") & summary["metric"].isin(list(GROUP_THROUGHPUTS))]
    rows = rows.assign(group=rows["deployment"].map(groups)).dropna(subset=["group", "value"])
    if rows.empty:
        return pd.DataFrame()
    keys = ["group", "language", "load_kind", "load_value"]
    table = rows.pivot_table(index=keys, columns="metric", values="value", aggfunc="sum", sort=False)
    table = table.reindex(columns=[m for m in GROUP_THROUGHPUTS if m in table]).rename(columns=GROUP_THROUGHPUTS)
    table.insert(0, "deployments", rows.groupby(keys, sort=False)["deployment"].nunique())
    table = table.reset_index()
    table.insert(2, "load", [load_text(k, v) for k, v in zip(table["load_kind"], table["load_value"], strict=True)])
    return table.drop(columns=["load_kind", "load_value"]).rename_axis(columns=None)


PARTIAL = "partial: never finished"
"""The status shown for a point a crash or interrupt cut short; `servelab run --resume` runs it again."""


def failures(points: pd.DataFrame, records: list[RequestRecord]) -> pd.DataFrame:
    """Points that failed, were aborted or never finished (partial), and every point with failed requests: its
    measured requests and errors on disk, its error rate (errors / requests), and the rate of each error class
    (failed requests of that class / requests, from `metrics.error_breakdown`). Empty when nothing went wrong."""
    if points.empty:
        return pd.DataFrame()
    table = points.set_index("point_id")[["status", "requests", "errors", "schedule_kept", "message"]].copy()
    measured = [r for r in records if not r.warmup]
    breakdown = error_breakdown(measured)
    if measured:
        sent_per_point = pd.Series([r.point_id for r in measured]).value_counts()
        table["requests"] = sent_per_point.reindex(table.index).fillna(0).astype(int)
        table["errors"] = breakdown.groupby("point_id")["requests"].sum().reindex(table.index).fillna(0).astype(int)
    sent = table["requests"].where(table["requests"] > 0)
    table.insert(3, "error rate", (table["errors"] / sent).fillna(0.0))
    if not breakdown.empty:
        by_class = breakdown.pivot_table(index="point_id", columns="error_class", values="requests", aggfunc="sum", fill_value=0)
        rates = by_class.reindex(table.index).fillna(0).div(sent, axis=0).fillna(0.0)
        for position, error_class in enumerate(sorted(rates.columns)):
            table.insert(4 + position, f"error rate: {error_class}", rates[error_class])
    partial = table["status"] == "started"
    table.loc[partial, "status"] = PARTIAL
    table.loc[partial & table["message"].isna(), "message"] = "the run stopped here; --resume runs it again"
    bad = table[(table["status"] != "done") | (table["errors"] > 0)]
    bad = bad.drop(columns=["schedule_kept"]).rename_axis("load point").reset_index()
    return bad.dropna(axis="columns", how="all")


PROMPT_LENGTH_TOLERANCE = 0.10
"""Prompts whose server-counted length is off the target by more than this share are reported."""


def prompt_length_warnings(summary: pd.DataFrame, target_tokens: int) -> list[str]:
    """One line per deployment and language whose prompts averaged more than 10 % off `target_tokens`, by the
    server's count. Without the model's tokenizer servelab estimates lengths from characters, and a small
    tokenizer can double them (the shape models' prompts averaged 521 tokens against 256)."""
    rows = summary[(summary["metric"] == "prompt_tokens") & (summary["stat"] == "mean")].dropna(subset=["value"])
    if rows.empty or target_tokens <= 0:
        return []
    notes = []
    for (deployment, language), group in rows.groupby(["deployment", "language"], sort=True):
        mean = float(group["value"].mean())
        if abs(mean - target_tokens) > PROMPT_LENGTH_TOLERANCE * target_tokens:
            notes.append(
                f"Prompts of {deployment} / {language} averaged {mean:.0f} tokens by the server's count, against a "
                f"target of {target_tokens}: read its throughput and latency for that length."
            )
    return notes


def agreement_turns(run_dir: Path) -> pd.DataFrame:
    """Each client's turns of the comparison (empty where the run made none)."""
    from servelab.checks.agreement import read_agreement_turns

    return read_agreement_turns(run_dir)


def agreement(run_dir: Path) -> pd.DataFrame:
    """servelab against `vllm bench serve` and the engine's own counter; empty where the run did not measure it."""
    from servelab.checks.agreement import read_agreement

    table = read_agreement(run_dir)
    return table.rename(columns=readable)


def readable(column: str) -> str:
    """A snake_case column name in words with its unit: 'servelab_mean_ttft_ms' -> 'servelab mean TTFT (ms)'."""
    for suffix, unit in (("_tok_s", " (tok/s)"), ("_req_s", " (req/s)"), ("_ms", " (ms)"), ("_pct", " %"), ("_mib", " MiB")):
        if column.endswith(suffix):
            column = column.removesuffix(suffix) + unit
            break
    words = column.replace("tok_s", "tok/s").replace("req_s", "req/s").replace("_", " ")
    for short in ("ttft", "tpot", "itl", "e2e"):
        words = re.sub(rf"\b{short}\b", short.upper(), words)
    return words


def memory(run_dir: Path, samples: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Per deployment: idle and peak memory against the planner's prediction (03_gpu_memory has the detail)."""
    from servelab.analyse import memory_tables as memory_report

    comparison = memory_report.planner_comparison(run_params(run_dir), samples, points)
    endpoints = memory_report.endpoint_memory(read_manifest(run_dir).get("engines", {}), samples, points)
    if comparison.empty and endpoints.empty:
        return pd.DataFrame()
    columns = ["deployment", "memory", "predicted_mib", "measured_mib", "error_pct", "peak_mib", "peak_error_pct"]
    if "device_index" in comparison:  # deployments on several GPUs: a row per GPU and deployment
        columns.insert(1, "device_index")
    names = {"device_index": "GPU", "predicted_mib": "planner MiB", "measured_mib": "idle MiB", "error_pct": "planner vs idle %",
             "peak_mib": "peak MiB", "peak_error_pct": "planner vs peak %"}
    table = comparison[columns] if not comparison.empty else pd.DataFrame(columns=columns)
    if not endpoints.empty:
        # Servers that ran already: the process measured (found by its port), or why none was.
        table = pd.concat([table, endpoints], ignore_index=True)
    return table.rename(columns=names).set_index("deployment")


def memory_sentences(samples: pd.DataFrame, table: pd.DataFrame) -> str:
    """The planner's and the attribution's verdicts in words, for the report under the memory table."""
    from servelab.analyse import memory_tables as memory_report

    lines = [memory_report.source_sentence(samples)]
    if "planner vs idle %" in table:
        comparison = table.rename(columns={"planner vs idle %": "error_pct", "planner vs peak %": "peak_error_pct", "GPU": "device_index"})
        lines.append(memory_report.planner_sentence(comparison.reset_index()))
        lines.append(peak_sentence(samples, table))
    check = memory_report.attribution_check(samples)
    if "max_abs_gap_pct" in check:
        row = check.iloc[0]
        lines.append(
            f"Attribution: over {int(row['listings']):,} listings, the memory listed per process matched device used minus the "
            f"{row['baseline_mib']:,.0f} MiB baseline within {row['max_abs_gap_pct']:.2f} % at worst (median "
            f"{row['median_gap_pct']:.3f} %); {row['unattributed_share_pct']:.1f} % of it belonged to no deployment."
        )
    return "\n".join(line for line in lines if line)


PEAK_GROWTH_MIB = 64.0
PEAK_GROWTH_SHARE = 0.02
"""Growth from idle to peak below both of these (MiB, share of idle) is noise, not a reason to explain the planner's
difference."""


def peak_sentence(samples: pd.DataFrame, table: pd.DataFrame) -> str:
    """Why the planner is further from the peak than from the idle footprint, when it is."""
    if "peak MiB" not in table or "idle MiB" not in table:
        return ""
    both = table[["peak MiB", "idle MiB"]].dropna()  # a split model's deployment is on several rows, one per GPU
    grown = both["peak MiB"] - both["idle MiB"]
    share = grown / both["idle MiB"]
    if grown.empty or not ((grown > PEAK_GROWTH_MIB) | (share > PEAK_GROWTH_SHARE)).any():
        return ""
    worst = grown.idxmax()
    source = str(samples["source"].iloc[0]) if not samples.empty else "none"
    why = (
        "host RSS grows under load as the engine first touches the pages of its KV cache and buffers"
        if source == "host_rss"
        else "the engine takes working memory beyond its static pool under load"
    )
    return (
        f"Why the planner is further from the peak: the planner predicts the footprint once loaded, and {why}, "
        f"so the peak is not the idle footprint ({worst} grew by {grown.max():,.0f} MiB). Leave room for the peak "
        "when co-locating."
    )


@dataclass(frozen=True)
class Check:
    """One line of the validity panel: what was checked, what was found, what it means and what to do."""

    check: str
    status: str
    """'ok', 'warning' or 'unknown'."""
    finding: str
    meaning: str
    action: str


CEILING_SHOWN = 4


def validity(run_dir: Path, summary: pd.DataFrame, samples: pd.DataFrame, points: pd.DataFrame) -> list[Check]:
    """Whether the numbers can be trusted: the client's ceiling, schedule lag, errors, engine drift where measured,
    the memory source, shape-only models and prompt lengths."""
    from servelab.checks.calibrate import WARN_FRACTION, ceiling_warnings

    manifest = read_manifest(run_dir)
    checks = []
    calibration = manifest.get("calibration")
    if calibration is None:
        checks.append(Check(
            "Client ceiling", "unknown", "The client was not calibrated on this host.",
            "A flat throughput curve could be the client's limit, not the engine's.",
            "Run `servelab calibrate` on this host once; later runs record the ceiling and are checked against it.",
        ))
    else:
        over = ceiling_warnings(calibration, summary)
        if over:
            listed = "; ".join(over[:CEILING_SHOWN]) + (f"; and {len(over) - CEILING_SHOWN} more" if len(over) > CEILING_SHOWN else "")
            checks.append(Check(
                "Client ceiling", "warning",
                f"{len(over)} load point(s) above {WARN_FRACTION:.0%} of the client's calibrated ceiling: {listed}.",
                "At those points the latencies may include the client's own delay (docs/calibration.md).",
                "Give the client more cores, or read those points as a lower bound of the engine's speed.",
            ))
        else:
            checks.append(Check(
                "Client ceiling", "ok",
                f"Every load point stayed below {WARN_FRACTION:.0%} of the client's ceiling ({_calibration_text(calibration)}).",
                "The client kept up: the throughput and latency are the engine's.", "Nothing.",
            ))
    checks.append(_schedule_check(points))
    checks.append(_error_check(summary, points))
    drift = _drift_check(run_dir)
    if drift is not None:
        checks.append(drift)
    checks.append(_memory_source_check(samples))
    from servelab.analyse import memory_tables as memory_report

    spilled = memory_report.spill_warnings(memory_report.loaded_models_frame(run_dir))
    if spilled:
        checks.append(Check(
            "Ollama models on the CPU", "warning", " ".join(spilled),
            "A model not wholly on the GPU decodes partly on the CPU: its speed is not the GPU's.",
            "Give Ollama fewer models at once (OLLAMA_MAX_LOADED_MODELS) or more GPU memory, then run again.",
        ))
    if any(engine.get("shape_only") for engine in manifest.get("engines", {}).values()):
        checks.append(Check(
            "Model weights", "warning", "Some models are shapes served with dummy weights.",
            "Speed and memory are real; the output text is not.", "Nothing, unless the text matters to you.",
        ))
    sweep = (manifest.get("params") or {}).get("sweep") or {}
    if sweep.get("input_tokens") and not sweep.get("prompts_file"):
        notes = prompt_length_warnings(summary, int(sweep["input_tokens"]))
        checks.append(Check(
            "Prompt length", "warning" if notes else "ok",
            " ".join(notes) if notes else f"Prompts averaged within 10 % of the {sweep['input_tokens']} tokens asked, by the server's count.",
            "Throughput and latency depend on the prompt length.",
            "Give the deployment its tokenizer (tokenizer.json) so prompts are cut in its own tokens." if notes else "Nothing.",
        ))
    return checks


def _schedule_check(points: pd.DataFrame) -> Check:
    if points.empty or "schedule_kept" not in points:
        return Check("Schedule lag", "unknown", "No load point recorded its schedule.", "", "Nothing to do.")
    finished = points[points["schedule_kept"].notna()]
    late = finished[finished["schedule_kept"] == False]  # noqa: E712
    if late.empty:
        return Check(
            "Schedule lag", "ok", f"All {len(finished)} load points sent their requests on schedule.",
            "Latencies from the intended send time equal those from the actual send time.", "Nothing.",
        )
    names = ", ".join(late["point_id"].astype(str).head(CEILING_SHOWN)) + (f" and {len(late) - CEILING_SHOWN} more" if len(late) > CEILING_SHOWN else "")
    return Check(
        "Schedule lag", "warning", f"{len(late)} of {len(finished)} load points fell behind their schedule: {names}.",
        "The client sent some requests later than planned (p99 lag over the limit): at those points the load the "
        "engine met was lighter than asked, and latency from the intended send time includes the client's delay.",
        "Use fewer streams per client core, or more cores; or read those points as lighter than their label.",
    )


def _error_check(summary: pd.DataFrame, points: pd.DataFrame) -> Check:
    requests = _pick(summary, "requests", "value")["value"].sum()
    errors = _pick(summary, "errors", "value")["value"].sum()
    unfinished = int((points["status"] != "done").sum()) if not points.empty else 0
    if requests == 0:
        return Check("Error rate", "unknown", "No measured request was recorded.", "", "Run the sweep (02_sweep).")
    rate = errors / requests
    if errors == 0 and unfinished == 0:
        return Check("Error rate", "ok", f"0 failed of {requests:,.0f} measured requests; every load point finished.",
                     "Every figure comes from complete points.", "Nothing.")
    return Check(
        "Error rate", "warning",
        f"{errors:,.0f} failed of {requests:,.0f} measured requests ({rate:.1%}); {unfinished} load point(s) did not finish.",
        "Throughput counts only successful requests; latency is over successful requests only.",
        "See 'Failures' below for the points and error classes; the engine's log is in the run folder's logs/.",
    )


DRIFT_NOTABLE = 0.05


def _drift_check(run_dir: Path) -> Check | None:
    turns = agreement_turns(run_dir)
    if turns.empty or "output_tok_s" not in turns:
        return None
    keys = [c for c in ("deployment", "concurrency", "mode", "client") if c in turns]
    spread = turns.groupby(keys)["output_tok_s"].agg(lambda v: v.max() / v.min() - 1 if v.min() > 0 else float("nan"))
    worst = float(spread.max())
    where = dict(zip(keys, spread.idxmax() if len(keys) > 1 else (spread.idxmax(),), strict=True))
    finding = (
        f"The same client's output tok/s moved by up to {worst:.0%} between turns at one load "
        f"({', '.join(f'{k} {v}' for k, v in where.items())})."
    )
    if worst <= DRIFT_NOTABLE:
        return Check("Engine drift", "ok", finding, "The engine's speed held still between windows.", "Nothing.")
    return Check(
        "Engine drift", "warning", finding,
        "The engine's own speed moves between windows, so differences smaller than this are not differences.",
        "Repeat points (more rounds or longer points) before reading small differences.",
    )


def _memory_source_check(samples: pd.DataFrame) -> Check:
    source = str(samples["source"].iloc[0]) if not samples.empty else "none"
    if source == "nvml":
        return Check("Memory source", "ok", "NVML: the GPU's memory, per device and per process.",
                     "Memory figures are GPU memory, attributed to each deployment's processes.", "Nothing.")
    if source == "host_rss":
        return Check(
            "Memory source", "warning", "Host RSS: this machine has no GPU (no NVML).",
            "Memory figures are the host memory of each engine's processes, not GPU memory.",
            "Run on a GPU host for GPU memory figures.",
        )
    return Check("Memory source", "unknown", "No memory was sampled in this run.", "There are no memory figures.",
                 "Check the memory sampler's message in manifest.json.")
