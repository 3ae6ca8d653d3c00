"""A run's files as tidy pandas frames: what every notebook and the report read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from servelab.analyse.metrics import e2e_ms, summarize, ttft_ms
from servelab.observe.memory import read_samples
from servelab.records import (
    GPU_FILE,
    HOST_MEMORY_FILE,
    MEMORY_COLUMNS,
    SUMMARY_FILE,
    latest_points,
    read_requests,
)

COMPRESSED = ".gz"
"""A recorded run folder may keep its CSV files gzipped (`summary.csv.gz`, `gpu.csv.gz`); they read the same."""


def _present(run_dir: Path, name: str) -> Path | None:
    """`run_dir/name`, else its gzipped copy, when it holds data."""
    for path in (run_dir / name, run_dir / f"{name}{COMPRESSED}"):
        if path.exists() and path.stat().st_size > 0:
            return path
    return None


def requests_frame(run_dir: Path) -> pd.DataFrame:
    """One row per request with derived per-request columns (ms, tokens/s); chunk times left out.

    TTFT and E2E are `metrics.ttft_ms` and `metrics.e2e_ms`: empty for a failed request, as in every metric."""
    records = read_requests(run_dir)
    if not records:
        return pd.DataFrame(
            columns=["point_id", "deployment", "framework", "model", "language", "warmup", "ok", "ttft_ms",
                     "e2e_ms", "request_tok_s", "prompt_tokens", "prompt_chars", "output_tokens", "error_class"]
        )
    rows = []
    for record in records:
        row = dataclasses.asdict(record)
        row.pop("chunk_ns")
        row["ok"] = record.ok
        row["ttft_ms"] = ttft_ms(record)
        row["e2e_ms"] = e2e_ms(record)
        decode_s = (record.end_ns - record.first_token_ns) / 1e9 if record.ok and record.first_token_ns else 0
        row["request_tok_s"] = (record.output_tokens - 1) / decode_s if decode_s > 0 and record.output_tokens else None
        rows.append(row)
    return pd.DataFrame(rows)


def points_frame(run_dir: Path) -> pd.DataFrame:
    points = latest_points(run_dir)
    return pd.DataFrame([dataclasses.asdict(p) for p in points.values()])


def memory_frame(run_dir: Path) -> pd.DataFrame:
    """The run's memory samples: gpu.csv from NVML, else host_memory.csv (labelled source='host_rss')."""
    for name in (GPU_FILE, HOST_MEMORY_FILE):
        path = _present(run_dir, name)
        if path is not None:
            return read_samples(path)
    return pd.DataFrame(columns=MEMORY_COLUMNS)


def summary_frame(run_dir: Path) -> pd.DataFrame:
    """summary.csv; for a run that stopped before writing it (a crash), the same table computed from its records."""
    path = _present(run_dir, SUMMARY_FILE)
    if path is not None:
        return pd.read_csv(path)
    return summarize(read_requests(run_dir), latest_points(run_dir))


def memory_source(run_dir: Path) -> str:
    """'nvml' when the run has GPU samples, 'host_rss' for the CPU fallback, 'none' when nothing was sampled."""
    frame = memory_frame(run_dir)
    return str(frame["source"].iloc[0]) if not frame.empty else "none"
