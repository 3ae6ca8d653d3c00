"""The comparison with `vllm bench serve`: its long-lived bench process where vLLM is absent (this machine, CI),
and the report's view of turns recorded on the H200.

The bench process's success path needs vLLM and runs on the GPU machine only (benchmarks/gpu_truth.py); here the
worker is real and so is the interpreter: it must fail at once, with a message that names the cause and the log.
servelab's own turns run here against the reference emitter, over several client processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from fixtures_records import make_record
from servelab.analyse import plots
from servelab.checks.agreement import (
    AGREEMENT_REQUESTS_FILE,
    AGREEMENT_TURNS_FILE,
    AgreementTurn,
    EngineWindow,
    ServelabWindow,
    VllmBench,
    _agreement_row,
    compare_with_vllm_bench,
    over_engine,
    read_agreement_turns,
)
from servelab.checks.calibrate import running_emitter
from servelab.errors import VllmBenchError
from servelab.measure import workers
from servelab.observe.counters import CounterSnapshot, engine_tpot_ms, engine_ttft_ms
from servelab.params import ConcurrencyLoad, Sweep
from servelab.records import RequestRecord, read_jsonl
from servelab.report import tables as report_tables
from servelab.serve.deploy import RunningServer

TURNS = Path(__file__).parents[1] / "data" / "recorded" / "h200-agreement-turns.csv"


def test_without_vllm_the_bench_worker_fails_at_once_naming_the_import_and_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "vllm-bench.log"
    # A hang would end in 'no reply within 60 s', a different message.
    with pytest.raises(VllmBenchError) as caught, VllmBench(sys.executable, log_path, timeout_s=60):
        pass
    assert "cannot import vLLM's benchmark" in str(caught.value) and str(log_path) in str(caught.value)
    assert "ModuleNotFoundError" in log_path.read_text(), "vLLM's side of the story goes to the log, not the replies"


def test_the_report_plots_each_turn_of_each_client_one_panel_per_concurrency(tmp_path: Path) -> None:
    (tmp_path / AGREEMENT_TURNS_FILE).write_bytes(TURNS.read_bytes())
    turns = report_tables.agreement_turns(tmp_path)
    assert len(turns) == 24 and set(turns["client"]) == {"servelab", "vllm-bench"}
    figure = plots.agreement_turns(turns)
    panels = [axis for axis in figure.axes if axis.collections]
    assert sorted(axis.get_title() for axis in panels) == ["concurrency = 1", "concurrency = 16", "concurrency = 64"]
    assert sum(len(collection.get_offsets()) for axis in panels for collection in axis.collections) == 24


def test_tables_from_before_the_shared_mode_read_as_turns_and_both_modes_get_a_row_of_panels(tmp_path: Path) -> None:
    (tmp_path / AGREEMENT_TURNS_FILE).write_bytes(TURNS.read_bytes())
    recorded = read_agreement_turns(tmp_path)
    assert list(recorded.columns[:3]) == ["deployment", "concurrency", "mode"] and set(recorded["mode"]) == {"turns"}
    both = pd.concat([recorded, recorded.assign(mode="shared")])
    titles = sorted(axis.get_title() for axis in plots.agreement_turns(both).axes if axis.collections)
    assert titles[:3] == ["mode = shared | concurrency = 1", "mode = shared | concurrency = 16", "mode = shared | concurrency = 64"]
    assert len(titles) == 6


def test_an_unknown_comparison_mode_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown comparison mode\(s\) \['together'\]: choose from \['turns', 'shared'\]"):
        compare_with_vllm_bench(None, Sweep(load=(ConcurrencyLoad(values=(16,)),)), [16], tmp_path, modes=("turns", "together"))  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir()), "nothing was started or written"


def test_a_run_without_a_comparison_shows_that_instead_of_an_empty_plot(tmp_path: Path) -> None:
    figure = plots.agreement_turns(report_tables.agreement_turns(tmp_path))
    assert "no comparison" in " ".join(text.get_text() for axis in figure.axes for text in axis.texts)


def _turn(client: str, requests: int, ttft: float, engine_ttft: float | None, tpot: float, engine_tpot: float) -> AgreementTurn:
    return AgreementTurn("tiny", 16, "turns", 0, 0, client, requests, 1000.0, ttft, tpot, engine_ttft, engine_tpot)


def test_set_against_the_engine_in_each_turn_a_drift_between_turns_cancels() -> None:
    # The engine ran twice as slow in vllm bench's turn: the raw means differ by half, the clients do not.
    turns = [_turn("servelab", 32, 60.0, 50.0, 10.5, 10.0), _turn("vllm-bench", 32, 120.0, 100.0, 21.0, 20.0)]
    assert over_engine(turns, "servelab", "ttft") == pytest.approx(1.2)
    assert over_engine(turns, "vllm-bench", "ttft") == pytest.approx(1.2)
    assert over_engine(turns, "servelab", "tpot") == pytest.approx(over_engine(turns, "vllm-bench", "tpot"))
    # Pooled by requests over a client's turns.
    more = [*turns, _turn("servelab", 96, 40.0, 40.0, 10.0, 10.0)]
    assert over_engine(more, "servelab", "ttft") == pytest.approx((60 * 32 + 40 * 96) / (50 * 32 + 40 * 96))
    # An engine without the histogram gives no figure rather than a wrong one.
    assert over_engine([_turn("servelab", 8, 30.0, None, 10.0, 10.0)], "servelab", "ttft") is None


def test_the_engines_own_means_come_from_its_histograms_between_two_readings() -> None:
    before = CounterSnapshot(0, 100.0, {"vllm:time_to_first_token_seconds_sum": 2.0, "vllm:time_to_first_token_seconds_count": 40.0,
                                        "vllm:request_time_per_output_token_seconds_sum": 0.4,
                                        "vllm:request_time_per_output_token_seconds_count": 40.0})
    after = CounterSnapshot(1, 200.0, {"vllm:time_to_first_token_seconds_sum": 3.5, "vllm:time_to_first_token_seconds_count": 50.0,
                                       "vllm:request_time_per_output_token_seconds_sum": 0.52,
                                       "vllm:request_time_per_output_token_seconds_count": 50.0})
    assert engine_ttft_ms(before, after) == pytest.approx(150.0)
    assert engine_tpot_ms(before, after) == pytest.approx(12.0)
    assert engine_ttft_ms(after, after) is None, "no request between the readings"
    llama = CounterSnapshot(0, 0.0, {"llamacpp:tokens_predicted_seconds_total": 0.0, "llamacpp:tokens_predicted_total": 0.0})
    later = CounterSnapshot(1, 8.0, {"llamacpp:tokens_predicted_seconds_total": 0.169062, "llamacpp:tokens_predicted_total": 8.0})
    assert engine_tpot_ms(llama, later) == pytest.approx(21.13, abs=0.01)



def _record(index: int, sent_ms: float, end_ms: float) -> RequestRecord:
    """4 output tokens, the first 10 ms after the send and the next ones 2 ms apart."""
    chunks = tuple(sent_ms + 10 + 2 * k for k in range(4))
    return make_record(index, point="p", intended_ms=sent_ms, sent_ms=sent_ms, chunks_ms=chunks, end_ms=end_ms, tokens=4, prompt=8)


def test_a_shared_row_leaves_the_engines_token_count_out_since_it_holds_both_clients_tokens() -> None:
    server = RunningServer("tiny", "vllm", "m", "m", "openai", "http://127.0.0.1:1", 1, 1, "", [], 0, 0)
    records = [_record(0, 0.0, 16.0), _record(1, 20.0, 36.0)]  # TPOT 2 ms; 8 tokens in 36 ms
    # The engine generated 16 tokens over the window: servelab's 8 and vllm bench's 8.
    window = ServelabWindow(records, 0.04, 16.0, 8, EngineWindow(10.0, 2.0))
    bench = {"completed": 2, "total_output_tokens": 8, "duration": 0.036, "mean_ttft_ms": 10.0, "mean_tpot_ms": 2.0}
    turns = [_turn("servelab", 2, 10.0, 10.0, 2.0, 2.0), _turn("vllm-bench", 2, 10.0, 10.0, 2.0, 2.0)]
    shared = _agreement_row(server, 2, "shared", 1, 2, 1, [window], [bench], turns)
    assert (shared.mode, shared.streams_per_client, shared.servelab_output_tok_s) == ("shared", 1, 222.2)
    assert shared.output_tok_s_diff_pct == 0.0 and shared.ttft_diff_pct == 0.0 and shared.tpot_diff_pct == 0.0
    assert shared.server_output_tok_s is None and shared.received_over_server is None
    # Taking turns, the same window holds servelab's tokens only, and the check applies.
    alone = _agreement_row(server, 2, "turns", 2, 2, 1, [ServelabWindow(records, 0.04, 8.0, 8, EngineWindow(10.0, 2.0))], [bench], turns)
    assert (alone.server_output_tok_s, alone.received_over_server) == (200.0, 1.0)


def test_servelab_turns_run_over_the_sweeps_client_processes_and_every_record_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against the reference emitter (tools/emitter), with no vllm bench: each servelab turn is one point over two real
    client processes (the sweep's path, servelab.measure.workers), whose merged records reach the agreement's file."""
    started: list[int] = []
    real = workers._run_processes

    def counted(jobs: list, window: workers.PointWindow) -> list:
        started.append(len(jobs))
        return real(jobs, window)

    monkeypatch.setattr(workers, "_run_processes", counted)
    sweep = Sweep(load=(ConcurrencyLoad(values=(4,)),), input_tokens=16, output_tokens=8, client_processes=2, request_timeout_s=60)
    with running_emitter(2.0, 1.0) as emitter:
        port = int(emitter.base_url.rsplit(":", 1)[1])
        server = RunningServer("emitter", "vllm", "servelab-emitter", "servelab-emitter", "openai", emitter.base_url, port, 0, "", [], 0, 0)
        table = compare_with_vllm_bench(server, sweep, [4], tmp_path, prompts_per_concurrency=1, min_prompts=12, rounds=2,
                                        vllm_bench=False)
    assert started == [2, 2], "each round's servelab turn ran over two client processes"
    (row,) = table.to_dict("records")
    assert (row["concurrency"], row["prompts"], row["vllm_bench_output_tok_s"]) == (4, 12, None)
    assert row["servelab_output_tok_s"] > 0
    records = list(read_jsonl(tmp_path / AGREEMENT_REQUESTS_FILE))
    for label in ("-r0", "-r1"):
        turn = [r for r in records if r["point_id"] == f"emitter/random/agreement-c4{label}"]
        assert sorted(r["request_index"] for r in turn) == list(range(6)), "every request of both processes, once"
        assert all(r["error_class"] is None and r["output_tokens"] == 8 for r in turn)
    assert len(records) == 12
    turns = read_agreement_turns(tmp_path)
    assert list(turns["client"]) == ["servelab", "servelab"] and list(turns["requests"]) == [6, 6]
