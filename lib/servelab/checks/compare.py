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
    if (path / SUMMARY_FILE).is_file():
        return _servelab_csv(path / SUMMARY_FILE)
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
