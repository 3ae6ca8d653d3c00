"""The tables of the stakeholder report, each computed from a run's files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from servelab.manifest import read_manifest, read_params


def run_header(run_dir: Path) -> pd.DataFrame:
    """What ran where: run id, params, git revision, host, GPU, and each engine's version."""
    manifest = read_manifest(run_dir)
    gpu = manifest.get("gpu")
    if gpu == "none" or not gpu:
        gpu_text = "none (CPU machine: memory figures are host RSS, not GPU memory)"
    else:
        names = ", ".join(f"{d['name']} ({d['memory_total_mib']:,.0f} MiB)" for d in gpu.get("devices", []))
        gpu_text = f"{names}; driver {gpu.get('driver')}"
    git = manifest.get("git", {})
    rows = [
        ("run", manifest.get("run_id")),
        ("params", manifest.get("params_file")),
        ("git", f"{git.get('sha', 'unknown')[:12]}{' (dirty tree)' if git.get('dirty') else ''}"),
        ("host", f"{manifest['host']['hostname']}, {manifest['host']['cores']} cores, {manifest['host']['memory_gib']} GiB"),
        ("GPU", gpu_text),
        ("started (UTC)", manifest.get("clock", {}).get("anchor", {}).get("utc")),
    ]
    for name, engine in manifest.get("engines", {}).items():
        shape = ", shape only (dummy weights)" if engine.get("shape_only") else ""
        rows.append((f"engine {name}", f"{engine['framework']} {engine['version']}, model {engine['model']}{shape}"))
    calibration = manifest.get("calibration")
    if calibration:
        rows.append(("client ceiling", _calibration_text(calibration)))
    rows += _cluster_rows(manifest.get("cluster"))
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def _cluster_rows(cluster: dict | None) -> list[tuple[str, str]]:
    """Under `--cluster`, one row per co-location group: its deployments, its node and how it ended."""
    if not cluster:
        return []
    rows = []
    for name, group in cluster.get("groups", {}).items():
        node = f"node {group['node_id'][:12]} at {group.get('node_ip')} ({group.get('hostname')})" if group.get("node_id") else "no node"
        status = group["status"] + (f": {group['message']}" if group.get("message") else "")
        rows.append((f"group {name}", f"{', '.join(group['deployments'])} on {node}; {status}"))
    return rows


def _calibration_text(calibration: dict) -> str:
    parts = []
    for key in ("max_req_s", "max_tok_s"):
        if key in calibration:
            parts.append(f"{key} {calibration[key]:,.0f}")
    return ", ".join(parts) or str(calibration)


def _pick(summary: pd.DataFrame, metric: str, stat: str) -> pd.DataFrame:
    return summary[(summary["metric"] == metric) & (summary["stat"] == stat)]


def key_results(summary: pd.DataFrame, requests: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """The seed's key-results table, from data: per deployment, best throughput, low-load latency, peak memory."""
    if summary.empty:
        return pd.DataFrame({"note": ["no load point has finished yet"]})
    alone = summary[~summary.get("interference", pd.Series(False, index=summary.index)).fillna(False).astype(bool)]
    rows = []
    for deployment, frame in alone.groupby("deployment"):
        throughput = _pick(frame, "output_tok_s", "value").dropna(subset=["value"])  # a failed point has none
        ttft = _pick(frame, "ttft_ms", "p50")
        lowest = ttft[ttft["load_value"] == ttft["load_value"].min()] if not ttft.empty else ttft
        success = _pick(frame, "success_rate", "value")
        row = {
            "deployment": deployment,
            "framework": frame["framework"].iloc[0],
            "model": frame["model"].iloc[0],
            "best output tok/s": round(throughput["value"].max(), 1) if not throughput.empty else None,
            "at load": throughput.loc[throughput["value"].idxmax(), "load_value"] if not throughput.empty else None,
            "median TTFT ms (lowest load)": round(lowest["value"].mean(), 1) if not lowest.empty else None,
            "success rate": round(success["value"].mean(), 4) if not success.empty else None,
        }
        row.update(_peak_memory(samples, str(deployment)))
        rows.append(row)
    return pd.DataFrame(rows).set_index("deployment")


def _peak_memory(samples: pd.DataFrame, deployment: str) -> dict[str, object]:
    rows = samples[(samples["scope"] == "process") & (samples["deployment"] == deployment)] if not samples.empty else samples
    if rows.empty:
        return {"peak memory MiB": None}
    per_time = rows.groupby("t_ns")["used_mib"].sum()
    label = "peak GPU memory MiB" if rows["source"].iloc[0] == "nvml" else "peak host RSS MiB (no GPU)"
    return {label: round(per_time.max(), 1)}


PARTIAL = "partial: never finished"
"""The status shown for a point a crash or interrupt cut short; `servelab run --resume` runs it again."""


def failures(points: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """Points that failed, were aborted or never finished (partial), and every point with failed requests: its
    measured requests and errors on disk, its error rate (errors / requests), and the rate of each error class
    (failed requests of that class / requests)."""
    if points.empty:
        return pd.DataFrame({"note": ["no load points recorded"]})
    table = points.set_index("point_id")[["status", "requests", "errors", "schedule_kept", "message"]].copy()
    measured = requests[~requests["warmup"].astype(bool)] if not requests.empty else requests
    failed = measured[~measured["ok"].astype(bool)] if not measured.empty else measured
    if not measured.empty:
        table["requests"] = measured.groupby("point_id").size().reindex(table.index).fillna(0).astype(int)
        table["errors"] = failed.groupby("point_id").size().reindex(table.index).fillna(0).astype(int)
    sent = table["requests"].where(table["requests"] > 0)
    table.insert(3, "error rate", (table["errors"] / sent).fillna(0.0).round(3))
    if not failed.empty:
        by_class = failed.groupby(["point_id", "error_class"]).size().unstack(fill_value=0)
        rates = by_class.reindex(table.index).fillna(0).div(sent, axis=0).fillna(0.0).round(3)
        for position, error_class in enumerate(sorted(rates.columns)):
            table.insert(4 + position, f"error rate: {error_class}", rates[error_class])
    partial = table["status"] == "started"
    table.loc[partial, "status"] = PARTIAL
    table.loc[partial & table["message"].isna(), "message"] = "the run stopped here; --resume runs it again"
    bad = table[(table["status"] != "done") | (table["errors"] > 0) | (table["schedule_kept"] == False)]  # noqa: E712
    if bad.empty:
        return pd.DataFrame({"note": [f"all {len(table)} load points finished with no failed request"]})
    return bad


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


def warnings(run_dir: Path, summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Things a reader must know before trusting the numbers."""
    from servelab.analyse import memory_tables as memory_report

    manifest = read_manifest(run_dir)
    notes = []
    if any(engine.get("shape_only") for engine in manifest.get("engines", {}).values()):
        notes.append("Some models are shapes served with dummy weights: speed and memory are real, output text is not.")
    if manifest.get("gpu") == "none":
        notes.append("No GPU: memory figures are the host RSS of the engine processes, not GPU memory.")
    if not samples.empty and samples["source"].iloc[0] != "nvml":
        notes.append("Memory source is host_rss (labelled as such in every plot).")
    sweep = (manifest.get("params") or {}).get("sweep") or {}
    if sweep.get("input_tokens") and not sweep.get("prompts_file"):
        notes.extend(prompt_length_warnings(summary, int(sweep["input_tokens"])))
    notes.extend(memory_report.spill_warnings(memory_report.loaded_models_frame(run_dir)))
    calibration = manifest.get("calibration")
    if calibration is None:
        notes.append("The client was not calibrated for this run (`servelab calibrate`); its ceiling is unknown.")
    if not notes:
        notes.append("none")
    return pd.DataFrame({"warning": notes})


def agreement_turns(run_dir: Path) -> pd.DataFrame:
    """Each client's turns of the comparison (empty where the run made none)."""
    from servelab.checks.agreement import read_agreement_turns

    return read_agreement_turns(run_dir)


def agreement(run_dir: Path) -> pd.DataFrame:
    """servelab against `vllm bench serve` and the engine's own counter, where the run measured it."""
    from servelab.checks.agreement import read_agreement

    table = read_agreement(run_dir)
    if table.empty:
        return pd.DataFrame({"note": ["not measured in this run (benchmarks/gpu_truth.py measures it on a GPU)"]})
    return table.set_index(["deployment", "mode", "concurrency"])


def memory(run_dir: Path, samples: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Per deployment: idle and peak memory against the planner's prediction (03_gpu_memory has the detail)."""
    from servelab.analyse import memory_tables as memory_report

    comparison = memory_report.planner_comparison(read_params(run_dir), samples, points)
    endpoints = memory_report.endpoint_memory(read_manifest(run_dir).get("engines", {}), samples, points)
    if comparison.empty and endpoints.empty:
        return pd.DataFrame({"note": ["no memory was sampled for a deployment the planner can predict"]})
    columns = ["deployment", "memory", "predicted_mib", "measured_mib", "error_pct", "peak_mib", "peak_error_pct"]
    names = {"predicted_mib": "planner MiB", "measured_mib": "idle MiB", "error_pct": "planner vs idle %",
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
        comparison = table.rename(columns={"planner vs idle %": "error_pct", "planner vs peak %": "peak_error_pct"})
        lines.append(memory_report.planner_sentence(comparison.reset_index()))
    check = memory_report.attribution_check(samples)
    if "max_abs_gap_pct" in check:
        row = check.iloc[0]
        lines.append(
            f"Attribution: over {int(row['listings']):,} listings, the memory listed per process matched device used minus the "
            f"{row['baseline_mib']:,.0f} MiB baseline within {row['max_abs_gap_pct']:.2f} % at worst (median "
            f"{row['median_gap_pct']:.3f} %); {row['unattributed_share_pct']:.1f} % of it belonged to no deployment."
        )
    return "\n".join(lines)

