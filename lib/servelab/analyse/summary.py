"""`summary.csv`: the tidy metrics of every finished load point, recomputed from the run's records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from servelab.analyse import metrics
from servelab.errors import OutputsError
from servelab.records import SUMMARY_FILE, latest_points, read_requests


def write_summary(run_dir: Path) -> pd.DataFrame:
    """Recompute summary.csv from requests.jsonl and points.jsonl, and return it."""
    summary = metrics.summarize(read_requests(run_dir), latest_points(run_dir))
    try:
        summary.to_csv(run_dir / SUMMARY_FILE, index=False)
    except OSError as error:
        raise OutputsError(f"cannot write {run_dir / SUMMARY_FILE}: {error.strerror}; free space or fix permissions") from None
    return summary
