"""The tables of a co-located sweep brought back from the GPU machine, as the results pages quote them.

    python benchmarks/session_tables.py RUN_DIR [--requests RUN-requests.jsonl.gz] [--beside OTHER_SUMMARY.csv.gz]
        [--labels THIS OTHER]

Prints, as Markdown:
- output tok/s, median TTFT and median TPOT per model, language and concurrency, each model alone (the others
  loaded and idle), from summary.csv;
- the turn-to-turn spread: the three languages at one model and concurrency are the same work (256 prompt tokens
  by the model's own tokenizer, 128 output tokens, ignore_eos), run about 30 s apart, so their spread,
  (max - min) / mean of output tok/s, is the engine's drift between windows;
- the spread inside each point, with --requests: output tokens that arrived in the first and in the second half of
  the point's timed window (drain left out), (first - second) / mean;
- joules per output token per model and point: NVML's energy counter over the point's window, apportioned among
  the deployments by servelab.observe.energy (docs/memory.md), the model's share over its output tokens;
- with --beside, another run's summary beside this one at the points both have: the third H200 session's eager
  co-located run beside the compiled one (the default --labels), or vLLM beside SGLang (`--labels sglang vllm`).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
from servelab.analyse.frames import memory_frame, points_frame
from servelab.observe.energy import energy_per_deployment

NS = 1_000_000_000


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs tabulate, which servelab does not depend on)."""
    frame = table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table
    def cell(value: object) -> str:
        return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) and not pd.isna(value) else str(value)
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def metric(summary: pd.DataFrame, name: str, stat: str) -> pd.Series:
    rows = summary[(summary["metric"] == name) & (summary["stat"] == stat)]
    return rows.set_index("point_id")["value"]


def alone_points(summary: pd.DataFrame) -> pd.DataFrame:
    points = summary.drop_duplicates("point_id").set_index("point_id")
    points = points[~points["interference"].astype(bool)][["deployment", "language", "load_value"]].copy()
    points["tok_s"] = metric(summary, "output_tok_s", "value")
    points["ttft_p50_ms"] = metric(summary, "ttft_ms", "p50")
    points["tpot_p50_ms"] = metric(summary, "tpot_ms", "p50")
    return points


def grid(points: pd.DataFrame, column: str, digits: int) -> str:
    table = points.pivot_table(index=["deployment", "language"], columns="load_value", values=column, sort=False)
    table.columns = [f"c={int(c)}" for c in table.columns]
    return markdown(table.round(digits))


def spread_between_languages(points: pd.DataFrame) -> pd.DataFrame:
    grouped = points.groupby(["deployment", "load_value"], sort=False)["tok_s"]
    spread = (grouped.max() - grouped.min()) / grouped.mean() * 100
    return spread.unstack("load_value").round(1)


def spread_inside_points(run_dir: Path, requests_file: Path, duration_s: float) -> pd.DataFrame:
    """Per point: output tokens arriving in each half of the timed window, from every chunk's arrival time."""
    halves: dict[str, list[float]] = {}
    starts: dict[str, int] = {}
    rows = [json.loads(line) for line in gzip.open(requests_file, "rt")]
    for row in rows:
        if not row["warmup"]:
            starts[row["point_id"]] = min(starts.get(row["point_id"], row["intended_send_ns"]), row["intended_send_ns"])
    for row in rows:
        if row["warmup"] or row.get("error_class") or not row["chunk_ns"] or "/together" in row["point_id"]:
            continue
        start = starts[row["point_id"]]
        chunks = np.asarray(row["chunk_ns"], dtype=np.int64) - start
        per_chunk = (row["output_tokens"] or 0) / len(chunks)
        first = float(np.count_nonzero(chunks < duration_s / 2 * NS)) * per_chunk
        second = float(np.count_nonzero((chunks >= duration_s / 2 * NS) & (chunks < duration_s * NS))) * per_chunk
        counts = halves.setdefault(row["point_id"], [0.0, 0.0])
        counts[0] += first
        counts[1] += second
    frame = pd.DataFrame.from_dict(halves, orient="index", columns=["first_half_tokens", "second_half_tokens"])
    frame["half_diff_pct"] = (frame["first_half_tokens"] - frame["second_half_tokens"]) / (
        (frame["first_half_tokens"] + frame["second_half_tokens"]) / 2) * 100
    return frame


def energy_per_token(run_dir: Path, summary: pd.DataFrame) -> pd.DataFrame:
    samples = memory_frame(run_dir)
    points = points_frame(run_dir)
    done = points[(points["status"] == "done") & ~points["interference"].astype(bool)]
    tokens = metric(summary, "output_tokens", "mean") * metric(summary, "requests", "value")
    rows = []
    for point in done.itertuples():
        energy = energy_per_deployment(samples, int(point.start_ns), int(point.end_ns))
        mine = energy[energy["deployment"] == point.deployment]
        joules = float(mine["energy_j"].sum())
        device = float(energy["energy_j"].sum())
        rows.append({"point_id": point.point_id, "deployment": point.deployment, "language": point.language,
                     "load_value": point.load_value, "model_j": joules, "device_j": device,
                     "model_share_pct": joules / device * 100 if device else np.nan,
                     "j_per_token": joules / tokens.get(point.point_id, np.nan)})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--requests", type=Path, help="the run's requests.jsonl.gz (gpu_collect.sh brings it apart)")
    parser.add_argument("--beside", "--eager", dest="beside", type=Path, help="another run's summary.csv(.gz) to set beside this one")
    parser.add_argument("--labels", nargs=2, default=("compiled", "eager"), metavar=("THIS", "OTHER"),
                        help="what this run and the other are, in the table's title and columns (default: compiled eager)")
    parser.add_argument("--duration-s", type=float, default=4.0, help="the points' timed window")
    parser.add_argument("--csv", type=Path, help="folder to write the per-point tables to")
    args = parser.parse_args()

    summary = pd.read_csv(args.run_dir / "summary.csv")
    points = alone_points(summary)
    for title, column, digits in (("output tok/s", "tok_s", 0), ("median TTFT, ms", "ttft_p50_ms", 1),
                                  ("median TPOT, ms", "tpot_p50_ms", 2)):
        print(f"\n### {title}, each model alone\n\n{grid(points, column, digits)}")
    print("\n### spread of output tok/s between the three languages, % of their mean\n")
    print(markdown(spread_between_languages(points)))
    tables = {"points": points}
    if args.requests:
        inside = spread_inside_points(args.run_dir, args.requests, args.duration_s)
        joined = points.join(inside)
        tables["halves"] = joined
        by_model = joined.groupby(["deployment", "load_value"], sort=False)["half_diff_pct"]
        print("\n### spread inside each point: first half against second half of its window, % (median |diff| over the languages)\n")
        print(markdown(by_model.apply(lambda values: values.abs().median()).unstack("load_value").round(1)))
    energy = energy_per_token(args.run_dir, summary)
    tables["energy"] = energy
    print("\n### joules per output token, model's apportioned share (median over the languages)\n")
    print(markdown(energy.pivot_table(index="deployment", columns="load_value", values="j_per_token", aggfunc="median", sort=False)
          .round(4)))
    print("\n### the model's share of the device's energy in its own points, % (median)\n")
    print(markdown(energy.pivot_table(index="deployment", columns="load_value", values="model_share_pct", aggfunc="median", sort=False)
          .round(1)))
    if args.beside:
        this, that = args.labels
        other = alone_points(pd.read_csv(args.beside))
        both = points.join(other[["tok_s", "tpot_p50_ms", "ttft_p50_ms"]].add_suffix(f"_{that}"), how="inner")
        both[f"{this}_over_{that}"] = both["tok_s"] / both[f"tok_s_{that}"]
        both = both.rename(columns={"tok_s": f"tok_s_{this}", "tpot_p50_ms": f"tpot_p50_ms_{this}"})
        tables[that] = both
        print(f"\n### {this} (this run) against {that} (the other), the points both have\n")
        print(markdown(both[[f"tok_s_{that}", f"tok_s_{this}", f"{this}_over_{that}", f"tpot_p50_ms_{that}",
                             f"tpot_p50_ms_{this}"]].round(2)))
    if args.csv:
        args.csv.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            table.to_csv(args.csv / f"{name}.csv.gz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
