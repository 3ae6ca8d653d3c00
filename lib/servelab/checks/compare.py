"""Runs side by side: every metric they share, each run's value, and the ratio and percent difference to the first.

A run is a servelab run folder (its `summary.csv`), a `summary.csv` itself, a `vllm bench serve` or GuideLLM
result file, or a folder of such files (as `interop.export_vllm_bench` writes). Rows match on the identity of
what was measured and how: deployment, framework, model, language, load kind and value, and whether the point
ran under interference, plus the metric and the stat. An identity column that some run leaves empty (a vLLM
result says no language unless `--metadata language=en` was given) is left out of the match.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from servelab.checks.interop import import_results
from servelab.errors import ServelabError
from servelab.params import Params, parse_params
from servelab.records import MANIFEST_FILE, REQUESTS_FILE, SUMMARY_FILE

IDENTITY_COLUMNS = ["deployment", "framework", "model", "language", "load_kind", "load_value", "interference"]
MATCH_COLUMNS = IDENTITY_COLUMNS + ["metric", "stat"]
RESULT_SUFFIXES = (".json", ".yaml", ".yml")


def read_summary(path: Path) -> pd.DataFrame:
    """The tidy summary of one run, with a `source` column ('servelab', 'vllm-bench' or 'guidellm')."""
    path = Path(path)
    if path.is_file():
        return _servelab_csv(path) if path.suffix == ".csv" else import_results(path)
    if not path.is_dir():
        raise ServelabError(f"{path}: no such run folder or result file")
    for name in (SUMMARY_FILE, f"{SUMMARY_FILE}.gz"):
        if (path / name).is_file():
            return _servelab_csv(path / name)
    if (path / MANIFEST_FILE).exists() or (path / REQUESTS_FILE).exists():
        raise ServelabError(
            f"{path} is a servelab run folder without {SUMMARY_FILE}: its sweep did not finish. Finish it with "
            f"`servelab run PARAMS --resume {path.name}`, or recompute the summary from {REQUESTS_FILE} with "
            f"`servelab.analyse.summary.write_summary(Path('{path}'))`"
        )
    results = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RESULT_SUFFIXES)
    if not results:
        raise ServelabError(
            f"{path} holds no {SUMMARY_FILE} and no result files ({', '.join(RESULT_SUFFIXES)}); "
            "give a servelab run folder, a vllm bench serve result or a GuideLLM report"
        )
    return pd.concat([import_results(p) for p in results], ignore_index=True)


def _servelab_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in ("metric", "stat", "value") if c not in frame.columns]
    if frame.empty or missing:
        raise ServelabError(
            f"{path} is not a servelab summary (empty, or no {', '.join(missing)} column); "
            "recompute it with servelab.analyse.summary.write_summary(run_dir)"
        )
    if "source" not in frame.columns:
        frame["source"] = "servelab"
    return frame


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Column names for the runs: the folder or file name, made unique with #2, #3 ..."""
    labels: list[str] = []
    for path in paths:
        name = path.parent.name if path.name == SUMMARY_FILE else path.name if path.is_dir() else path.stem
        label, n = name, 1
        while label in labels:
            n += 1
            label = f"{name}#{n}"
        labels.append(label)
    return labels


def compare_runs(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per shared (identity, metric, stat): each run's value, then `ratio_<run>` and `pct_diff_<run>`
    of every later run against the first (other / first, and (other / first - 1) x 100; empty where the first is 0).
    """
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise ServelabError(f"compare needs two runs or more; got {len(paths)}")
    labels = run_labels(paths)
    frames = [read_summary(p) for p in paths]
    on = [c for c in MATCH_COLUMNS if all(c in f.columns and f[c].notna().any() for f in frames)]
    for column in ("metric", "stat"):
        if column not in on:
            raise ServelabError(f"a run has no {column!r} column; every summary has metric, stat and value")
    joined: pd.DataFrame | None = None
    for label, frame, path in zip(labels, frames, paths, strict=True):
        _check_unique(frame, on, path)
        part = frame[on + ["unit", "value"]].rename(columns={"value": label, "unit": f"unit_{label}"})
        joined = part if joined is None else joined.merge(part, on=on, how="inner")
    assert joined is not None
    if joined.empty:
        raise ServelabError(_no_match_message(labels, frames, on))
    joined.insert(len(on), "unit", joined[f"unit_{labels[0]}"])
    joined = joined.drop(columns=[f"unit_{label}" for label in labels])
    base = joined[labels[0]].astype(float)
    for label in labels[1:]:
        ratio = joined[label].astype(float) / base.where(base != 0)
        joined[f"ratio_{label}"] = ratio.replace([np.inf, -np.inf], np.nan)
        joined[f"pct_diff_{label}"] = (joined[f"ratio_{label}"] - 1) * 100
    return joined.reset_index(drop=True)


def _check_unique(frame: pd.DataFrame, on: list[str], path: Path) -> None:
    duplicated = frame.duplicated(on, keep=False)
    if duplicated.any():
        left_out = [c for c in IDENTITY_COLUMNS if c not in on]
        example = frame.loc[duplicated, [c for c in ["point_id"] + on if c in frame.columns]].head(2)
        raise ServelabError(
            f"{path}: several rows match the same {', '.join(on)} (for example points "
            f"{', '.join(map(str, example.get('point_id', example.index)))}), because another run leaves "
            f"{', '.join(left_out) or 'nothing'} empty. Give that run its identity "
            "(vllm bench serve --metadata language=en deployment=NAME, or interop.import_results(..., language=...))"
        )


def _no_match_message(labels: list[str], frames: list[pd.DataFrame], on: list[str]) -> str:
    identity = [c for c in on if c in IDENTITY_COLUMNS]
    lines = [f"no rows match across the runs on {', '.join(on)}. Their points:"]
    for label, frame in zip(labels, frames, strict=True):
        points = frame[identity].drop_duplicates().head(4).to_dict("records")
        lines.append(f"  {label}: {points}")
    lines.append(
        "Name the same deployment, model and language in each (for vllm bench serve: --metadata deployment=NAME "
        "model=NAME language=en; or interop.import_results(path, deployment=..., model=..., language=...))"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ frameworks side by side
CONDITION_KEYS = ("GPU", "prompt tokens", "output tokens", "languages", "loads", "API")
"""What must be equal for two rows to be ranked together: the figures of a different GPU, prompt length or load grid
are listed, never ranked against each other."""


def _run_conditions(manifest: dict, params: Params) -> dict[str, str]:
    gpu = manifest.get("gpu")
    sweep = params.sweep
    loads = "; ".join(f"{load.kind} {', '.join(f'{v:g}' for v in load.values)}" for load in sweep.load)
    return {
        "GPU": "none (host RSS)" if gpu == "none" or not gpu else ", ".join(d["name"] for d in gpu.get("devices", [])),
        "prompt tokens": str(sweep.input_tokens),
        "output tokens": str(sweep.output_tokens),
        "languages": ", ".join(sweep.languages),
        "loads": loads,
        "API": sweep.api,
    }


def _at_load(frame: pd.DataFrame, metric: str, stat: str, load_value: float | None) -> float | None:
    rows = frame[(frame["metric"] == metric) & (frame["stat"] == stat) & (frame["load_value"] == load_value)]
    values = rows["value"].dropna()
    return float(values.mean()) if not values.empty else None


def _energy_per_token(samples: pd.DataFrame, frame: pd.DataFrame, deployment: str) -> float | None:
    """J per output token over the whole run: the device's energy split to the deployment (observe.energy), over the
    tokens its own points generated (output_tokens count x mean, summed)."""
    from servelab.observe.energy import energy_per_deployment

    if samples.empty or str(samples["source"].iloc[0]) != "nvml":
        return None
    energy = energy_per_deployment(samples)
    joules = energy.loc[energy["deployment"] == deployment, "energy_j"].sum() if not energy.empty else 0.0
    counts = frame[(frame["metric"] == "output_tokens") & (frame["stat"] == "count")].set_index("point_id")["value"]
    means = frame[(frame["metric"] == "output_tokens") & (frame["stat"] == "mean")].set_index("point_id")["value"]
    tokens = float((counts * means.reindex(counts.index)).sum())
    return joules / tokens if joules > 0 and tokens > 0 else None


def framework_table(run_dirs: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frameworks, models and settings side by side, over one run folder or several: (table, conditions).

    One row per deployment and run, its own load points (neighbours idle): framework and engine version, model,
    settings, best output tok/s and where, TTFT and TPOT percentiles at that load, success, idle and peak memory,
    and energy per output token where NVML measured it. Rows are ranked by best output tok/s only within a set of
    equal conditions (`CONDITION_KEYS`); `conditions` lists each set, so unlike things are never ranked together."""
    from servelab.analyse import frames
    from servelab.manifest import read_manifest
    from servelab.observe.memory import idle_footprint, peaks

    rows: list[dict[str, object]] = []
    condition_sets: list[dict[str, str]] = []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / MANIFEST_FILE).is_file():
            raise ServelabError(
                f"{run_dir} is not a servelab run folder (no {MANIFEST_FILE}); the framework table (--html) reads run "
                "folders: give outputs/<run-id>, or drop --html to compare result files"
            )
        manifest = read_manifest(run_dir)
        params = parse_params(manifest["params"], str(run_dir / MANIFEST_FILE))
        conditions = _run_conditions(manifest, params)
        if conditions not in condition_sets:
            condition_sets.append(conditions)
        label = chr(ord("A") + condition_sets.index(conditions))
        summary = frames.summary_frame(run_dir)
        samples = frames.memory_frame(run_dir)
        points = frames.points_frame(run_dir)
        alone = summary[~summary["interference"].fillna(False).astype(bool)] if "interference" in summary else summary
        idle = idle_footprint(samples, points).set_index("deployment")["idle_mib"] if not samples.empty else pd.Series(dtype=float)
        top = peaks(samples).set_index("deployment")["peak_mib"] if not samples.empty else pd.Series(dtype=float)
        memory = "GPU" if not samples.empty and str(samples["source"].iloc[0]) == "nvml" else "host RSS"
        engines = manifest.get("engines", {})
        for deployment in params.deployments:
            frame = alone[alone["deployment"] == deployment.name]
            engine = engines.get(deployment.name, {})
            throughput = frame[(frame["metric"] == "output_tok_s") & (frame["stat"] == "value")].dropna(subset=["value"])
            best = throughput.loc[throughput["value"].idxmax()] if not throughput.empty else None
            load = float(best["load_value"]) if best is not None else None
            settings = deployment.engine.model_dump(exclude_defaults=True)
            rows.append({
                "conditions": label,
                "run": run_dir.name,
                "deployment": deployment.name,
                "framework": str(engine.get("version") or deployment.engine.kind),
                "model": str(engine.get("model") or deployment.shape or deployment.model)
                + (" (shape, dummy weights)" if engine.get("shape_only") else ""),
                "settings": ", ".join(
                    f"{k} {' '.join(map(str, v)) if isinstance(v, list | tuple) else v}"
                    for k, v in settings.items() if k not in ("kind", "image", "python", "binary") and v not in (None, [], ())
                ),
                "best output (tok/s)": float(best["value"]) if best is not None else None,
                "at load": (f"c\u00a0=\u00a0{load:g}" if best["load_kind"] == "concurrency" else f"{load:g}\u00a0req/s")
                if best is not None else "not recorded",
                "TTFT p50 (ms)": _at_load(frame, "ttft_ms", "p50", load),
                "TTFT p99 (ms)": _at_load(frame, "ttft_ms", "p99", load),
                "TPOT p50 (ms)": _at_load(frame, "tpot_ms", "p50", load),
                "TPOT p99 (ms)": _at_load(frame, "tpot_ms", "p99", load),
                "success": _at_load(frame, "success_rate", "value", load),
                f"idle {memory} MiB": idle.get(deployment.name),
                f"peak {memory} MiB": top.get(deployment.name),
                "energy (J/token)": _energy_per_token(samples, frame, deployment.name),
            })
    table = pd.DataFrame(rows)
    ranked = table["best output (tok/s)"].notna()
    table.insert(1, "rank", pd.NA)
    table.loc[ranked, "rank"] = (
        table[ranked].groupby("conditions")["best output (tok/s)"].rank(ascending=False, method="min").astype(int)
    )
    table = table.sort_values(["conditions", "rank", "run"], na_position="last", kind="stable").reset_index(drop=True)
    # The figures right after the deployment and its framework, the longer description after them.
    described = ["model", "settings", "run"]
    table = table[[c for c in table.columns if c not in described] + described]
    conditions = pd.DataFrame([{"conditions": chr(ord("A") + i), **c} for i, c in enumerate(condition_sets)])
    return table.dropna(axis="columns", how="all"), conditions
