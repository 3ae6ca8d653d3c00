"""`summary.csv`: the tidy metrics of every finished load point, recomputed from the run's records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from servelab.analyse import metrics
from servelab.errors import OutputsError
from servelab.params import Params
from servelab.records import SUMMARY_FILE, latest_points, read_requests


def slo_of(params: Params) -> metrics.Slo | None:
    """The params' SLOs as the metrics' `Slo`, or None when the params set none."""
    return metrics.Slo(**params.slo.model_dump()) if params.slo is not None else None


def write_summary(run_dir: Path, slo: metrics.Slo | None = None) -> pd.DataFrame:
    """Recompute summary.csv from requests.jsonl and points.jsonl, and return it; with `slo`, goodput_req_s too."""
    summary = metrics.summarize(read_requests(run_dir), latest_points(run_dir), slo=slo)
    try:
        summary.to_csv(run_dir / SUMMARY_FILE, index=False)
    except OSError as error:
        raise OutputsError(f"cannot write {run_dir / SUMMARY_FILE}: {error.strerror}; free space or fix permissions") from None
    return summary
