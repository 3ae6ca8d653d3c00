"""compare: runs side by side from their summary.csv or imported result files, with ratios to the first run,
and clear refusals when a run has no summary or nothing matches."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from servelab.analyse.metrics import summarize
from servelab.checks.compare import compare_runs, read_summary, run_labels
from servelab.checks.interop import export_vllm_bench
from servelab.cli import main
from servelab.errors import ServelabError
from servelab.records import POINTS_FILE, REQUESTS_FILE, SUMMARY_FILE, PointRecord, RequestRecord, to_dict

GUIDELLM_SAMPLE = Path(__file__).parents[1] / "data" / "interop" / "guidellm_report_sample.json"
MS = 1_000_000


def request(
    point: PointRecord, index: int, start_ms: float, slowdown: float, error: str | None = None
) -> RequestRecord:
    """A request of 5 tokens in 4 chunks; `slowdown` stretches its TTFT and its gaps."""
    first = start_ms + 20 * slowdown
    chunks = [first + k * 10 * slowdown for k in range(4)]
    return RequestRecord(
        point_id=point.point_id,
        request_index=index,
        deployment=point.deployment,
        framework=point.framework,
        model=point.model,
        language=point.language,
        warmup=False,
        intended_send_ns=round(start_ms * MS),
        actual_send_ns=round(start_ms * MS),
        first_token_ns=round(first * MS),
        end_ns=round((chunks[-1] + 1) * MS),
        chunk_ns=[round(c * MS) for c in chunks],
        chunk_count=4,
        prompt_tokens=10,
        output_tokens=5,
        token_source="server",
        error_class=error,
    )


def write_run(
    folder: Path,
    slowdown: float,
    *,
    deployment: str = "dep",
    model: str = "smollm2",
    languages: tuple[str, ...] = ("en",),
    errors: int = 0,
    summary: bool = True,
) -> Path:
    """A finished run: one deployment, concurrency 1 and 2 per language, 4 requests per point."""
    folder.mkdir(parents=True)
    points, records = [], []
    for language in languages:
        for concurrency in (1, 2):
            point = PointRecord(
                f"{deployment}/{language}/concurrency-{concurrency}", deployment, "vllm", model, language,
                "concurrency", float(concurrency), "done", 0,
            )  # fmt: skip
            points.append(point)
            records += [
                request(point, i, 100.0 * i, slowdown, "http_5xx" if i < errors else None) for i in range(4)
            ]
    (folder / REQUESTS_FILE).write_text("".join(json.dumps(to_dict(r)) + "\n" for r in records))
    (folder / POINTS_FILE).write_text("".join(json.dumps(to_dict(p)) + "\n" for p in points))
    if summary:
        summarize(records, {p.point_id: p for p in points}).to_csv(folder / SUMMARY_FILE, index=False)
    return folder


def row(table: pd.DataFrame, metric: str, stat: str, load_value: float = 1.0) -> pd.Series:
    found = table[(table.metric == metric) & (table.stat == stat) & (table.load_value == load_value)]
    assert len(found) == 1, (metric, stat, load_value)
    return found.iloc[0]


def test_two_runs_side_by_side_with_ratio_and_percent_difference(tmp_path):
    before = write_run(tmp_path / "20250601-100000-demo", slowdown=1.0)
    after = write_run(tmp_path / "20250602-100000-demo", slowdown=1.5)
    table = compare_runs([before, after])
    assert list(table.columns[:10]) == [
        "deployment", "framework", "model", "language", "load_kind", "load_value", "interference", "metric",
        "stat", "unit",
    ]  # fmt: skip
    assert list(table.columns[10:]) == [
        "20250601-100000-demo",
        "20250602-100000-demo",
        "ratio_20250602-100000-demo",
        "pct_diff_20250602-100000-demo",
    ]
    ttft = row(table, "ttft_ms", "mean")
    assert (ttft["20250601-100000-demo"], ttft["20250602-100000-demo"]) == pytest.approx((20.0, 30.0))
    assert ttft["ratio_20250602-100000-demo"] == pytest.approx(1.5)
    assert ttft["pct_diff_20250602-100000-demo"] == pytest.approx(50.0)
    assert ttft.unit == "ms"
    assert row(table, "itl_ms", "p99", load_value=2.0)["ratio_20250602-100000-demo"] == pytest.approx(1.5)
    assert row(table, "requests", "value")["pct_diff_20250602-100000-demo"] == 0.0
    # every (point, metric, stat) of the summary appears once
    summary = pd.read_csv(before / SUMMARY_FILE)
    assert len(table) == len(summary)


def test_a_ratio_against_zero_is_left_empty(tmp_path):
    clean = write_run(tmp_path / "clean", slowdown=1.0)
    failing = write_run(tmp_path / "failing", slowdown=1.0, errors=1)
    errors = row(compare_runs([clean, failing]), "errors", "value")
    assert (errors.clean, errors.failing) == (0.0, 1.0)
    assert math.isnan(errors.ratio_failing) and math.isnan(errors.pct_diff_failing)


def test_three_runs_are_each_compared_with_the_first(tmp_path):
    runs = [write_run(tmp_path / name, slowdown=s) for name, s in (("a", 1.0), ("b", 2.0), ("c", 0.5))]
    e2e = row(compare_runs(runs), "ttft_ms", "p50")
    assert (e2e.ratio_b, e2e.ratio_c) == pytest.approx((2.0, 0.5))
    assert (e2e.pct_diff_b, e2e.pct_diff_c) == pytest.approx((100.0, -50.0))


def test_a_run_compared_with_its_own_vllm_export_agrees(tmp_path):
    run = write_run(tmp_path / "run", slowdown=1.0, errors=1)
    export_vllm_bench(run, tmp_path / "as-vllm")
    table = compare_runs([run, tmp_path / "as-vllm"])
    assert {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "req_s", "output_tok_s", "success_rate"} <= set(
        table.metric
    )
    assert table["ratio_as-vllm"].dropna().tolist() == pytest.approx(
        [1.0] * table["ratio_as-vllm"].notna().sum()
    )
    assert (table["ratio_as-vllm"].notna()).sum() > 100


def test_identity_a_run_leaves_empty_is_not_matched_on(tmp_path):
    # GuideLLM says no framework or language; the rows still match on deployment, model and load.
    run = write_run(
        tmp_path / "run",
        slowdown=1.0,
        deployment="guidellm_report_sample",
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    table = compare_runs([run, GUIDELLM_SAMPLE])
    assert "framework" not in table.columns and "language" not in table.columns
    assert set(table.load_value) == {1.0, 2.0}
    assert set(table.metric) >= {"ttft_ms", "tpot_ms", "e2e_ms", "req_s", "requests"}
    assert row(table, "requests", "value", load_value=2.0).guidellm_report_sample == 8.0


def test_a_run_that_cannot_be_matched_without_its_language_is_refused(tmp_path):
    run = write_run(
        tmp_path / "run",
        slowdown=1.0,
        deployment="guidellm_report_sample",
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        languages=("en", "ko"),
    )
    with pytest.raises(ServelabError, match=r"several rows match.*language.*--metadata language=en"):
        compare_runs([run, GUIDELLM_SAMPLE])


def test_runs_with_nothing_in_common_are_refused_with_their_points(tmp_path):
    one = write_run(tmp_path / "one", slowdown=1.0, deployment="qwen-vllm")
    two = write_run(tmp_path / "two", slowdown=1.0, deployment="qwen-sglang")
    with pytest.raises(
        ServelabError, match=r"(?s)no rows match.*one: .*qwen-vllm.*two: .*qwen-sglang.*--metadata"
    ):
        compare_runs([one, two])


def test_a_run_folder_without_a_summary_is_named_with_the_fix(tmp_path):
    done = write_run(tmp_path / "done", slowdown=1.0)
    unfinished = write_run(tmp_path / "20250601-100000-demo", slowdown=1.0, summary=False)
    with pytest.raises(
        ServelabError, match=r"20250601-100000-demo is a servelab run folder without summary\.csv.*--resume"
    ):
        compare_runs([done, unfinished])
    with pytest.raises(ServelabError, match=r"nowhere: no such run folder"):
        compare_runs([done, tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ServelabError, match=r"empty holds no summary\.csv and no result files"):
        read_summary(tmp_path / "empty")
    with pytest.raises(ServelabError, match=r"two runs or more; got 1"):
        compare_runs([done])


def test_labels_are_the_run_names_made_unique(tmp_path):
    (tmp_path / "x" / "run").mkdir(parents=True)
    (tmp_path / "y" / "run").mkdir(parents=True)
    paths = [tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "z" / SUMMARY_FILE, GUIDELLM_SAMPLE]
    assert run_labels(paths) == ["run", "run#2", "z", "guidellm_report_sample"]


def test_the_cli_prints_the_comparison_and_refuses_a_missing_summary_in_one_line(tmp_path, capsys):
    before = write_run(tmp_path / "before", slowdown=1.0)
    after = write_run(tmp_path / "after", slowdown=2.0)
    assert main(["compare", str(before), str(after)]) == 0
    printed = capsys.readouterr().out
    assert "ratio_after" in printed and "ttft_ms" in printed
    unfinished = write_run(tmp_path / "unfinished", slowdown=1.0, summary=False)
    assert main(["compare", str(before), str(unfinished)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("servelab: ") and "without summary.csv" in error and "Traceback" not in error


def test_the_cli_exports_a_run_imports_it_back_and_compares_it_with_the_run_as_equal(tmp_path, capsys):
    run = write_run(tmp_path / "run", slowdown=1.0, languages=("en", "ko"))
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    exported = sorted((tmp_path / "exported").glob("*.json"))
    assert len(exported) == 4
    assert main(["import", *map(str, exported), "--out", str(tmp_path / "imported.csv")]) == 0
    imported = pd.read_csv(tmp_path / "imported.csv")
    assert set(imported["source"]) == {"vllm-bench"} and set(imported["language"]) == {"en", "ko"}
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "imported.csv"), str(run), "--outputs", str(tmp_path)]) == 0
    table = compare_runs([tmp_path / "imported.csv", run])
    mean_ttft = table[(table.metric == "ttft_ms") & (table.stat == "mean")]
    assert len(mean_ttft) == 4
    assert mean_ttft.filter(like="ratio_").iloc[:, 0].tolist() == pytest.approx([1.0] * 4)


def test_the_cli_takes_three_runs_by_id_and_refuses_one(tmp_path, capsys):
    for name, slowdown in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        write_run(tmp_path / name, slowdown=slowdown)
    assert main(["compare", "a", "b", "c", "--outputs", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "ratio_b" in printed and "ratio_c" in printed
    assert main(["compare", "a", "--outputs", str(tmp_path)]) == 2
    assert "two runs or more" in capsys.readouterr().err


RECORDED = Path(__file__).parents[1] / "data" / "recorded"


def test_compare_html_sets_two_recorded_runs_of_different_frameworks_side_by_side(tmp_path, capsys):
    """The recorded vLLM co-located run and the recorded SGLang run (tests/data/recorded/README.md): one row per
    deployment with its framework version, settings and memory; same GPU and grid, so one set of conditions."""
    out = tmp_path / "frameworks.html"
    runs = [str(RECORDED / "h200-vllm-colocated-run"), str(RECORDED / "h200-sglang-run")]
    assert main(["compare", *runs, "--html", str(out)]) == 0
    assert f"framework table: {out}" in capsys.readouterr().out
    page = out.read_text()
    for expected in ("vllm 0.26.0", "sglang 0.5.16", "mem_fraction_static 0.15", "gpu_memory_utilization 0.15",
                     "NVIDIA H200", "22,872", "2,793", "not recorded", "energy (J/token)",
                     'alt="Horizontal bar chart'):
        assert expected in page, expected
    assert page.count('<figure class="servelab-chart">') == 1


def test_the_framework_table_ranks_only_rows_of_equal_conditions(tmp_path):
    from servelab.checks.compare import framework_table

    other = tmp_path / "other-gpu"
    shutil.copytree(RECORDED / "h200-vllm-colocated-run", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["gpu"]["devices"][0]["name"] = "NVIDIA H100"
    (other / "manifest.json").write_text(json.dumps(manifest))
    table, conditions = framework_table([RECORDED / "h200-vllm-colocated-run", other])
    assert list(conditions["GPU"]) == ["NVIDIA H200", "NVIDIA H100"]
    assert sorted(table.loc[table["conditions"] == "A", "rank"]) == [1, 2, 3]
    assert sorted(table.loc[table["conditions"] == "B", "rank"]) == [1, 2, 3], "an H100 row is never ranked against an H200 row"


def test_compare_html_refuses_a_result_file_that_is_not_a_run_folder(tmp_path, capsys):
    first = write_run(tmp_path / "a", 1.0)
    assert main(["compare", str(first), str(GUIDELLM_SAMPLE), "--html", str(tmp_path / "x.html")]) == 2
    assert "not a servelab run folder" in capsys.readouterr().err
