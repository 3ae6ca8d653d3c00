"""servelab against `vllm bench serve` and against the engine's own counters, on the same server and load.

For each concurrency, servelab and `vllm bench serve` each send the same number of random-token prompts of
the same length in the model's own tokens, greedy and with ignore_eos, on the same server, in one of two modes:

- `turns`: one client after the other, each holding all the streams. Around each servelab turn the engine's
  Prometheus generation counter is read, which gives the server-side generation throughput that servelab's own
  output tok/s must reach (else the client, not the engine, is the limit). The readings bracket the load as
  tightly as the client can (`servelab.measure.workers.PointWindow`): the first once every client is ready, just
  before the first request; the second as soon as the last request has ended.
- `shared`: both clients at once, each holding half the streams, so both measure the same engine at the same
  moment. An engine whose speed drifts between windows moves both clients' figures alike, which taking turns
  cannot promise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from servelab.aio import run_sync
from servelab.analyse import metrics
from servelab.errors import VllmBenchError
from servelab.measure.clients import Target
from servelab.measure.load import ensure_file_descriptors, make_client
from servelab.measure.sweep import prompt_tokenizers, prompts_for
from servelab.measure.tokens import JsonTokenizer, ServerTokenizer
from servelab.measure.workers import PARTS_DIR, ClientCeiling, PointWindow, ceiling_of_run, drive_point
from servelab.observe import counters as engine_metrics
from servelab.params import ConcurrencyLoad, Sweep
from servelab.records import JsonlWriter, RequestRecord
from servelab.serve.deploy import RunningServer, stop_child

log = logging.getLogger(__name__)
AGREEMENT_FILE = "agreement.csv"
AGREEMENT_REQUESTS_FILE = "agreement_requests.jsonl"
AGREEMENT_TURNS_FILE = "agreement_turns.csv"
MODES = ("turns", "shared")
WORKER = Path(__file__).with_name("vllm_bench_worker.py")


@dataclass
class AgreementRow:
    deployment: str
    concurrency: int
    mode: str
    """'turns' (one client after the other, each with all the streams) or 'shared' (both at once)."""
    streams_per_client: int
    prompts: int
    """Per client, over all rounds."""
    rounds: int
    servelab_output_tok_s: float
    vllm_bench_output_tok_s: float | None
    output_tok_s_diff_pct: float | None
    servelab_mean_ttft_ms: float
    vllm_bench_mean_ttft_ms: float | None
    ttft_diff_pct: float | None
    servelab_mean_tpot_ms: float
    vllm_bench_mean_tpot_ms: float | None
    tpot_diff_pct: float | None
    server_output_tok_s: float | None
    """The engine's own generation counter over the window of servelab's turns (None when shared: the engine's
    count then holds both clients' tokens)."""
    client_received_tok_s: float | None
    """Tokens servelab received (server-counted) over the same window."""
    received_over_server: float | None
    servelab_over_server: float | None = None
    """servelab's output tok/s over the engine's own (server_output_tok_s), in turns: at least 0.99 where the
    client keeps up with the engine. servelab's window (first send to last end) lies inside the counters' readings,
    so the figure sits at or slightly above received_over_server."""
    ttft_diff_vs_engine_pct: float | None = None
    """servelab's mean TTFT over the engine's own, against vllm bench's over the engine's own, each in its own
    turns: the TTFT comparison with the engine's drift between turns taken out."""
    tpot_diff_vs_engine_pct: float | None = None
    """The same for TPOT."""


def vllm_bench_args(
    base_url: str, model: str, tokenizer: str, concurrency: int, prompts: int, input_len: int, output_len: int,
    result_dir: Path, seed: int = 0, label: str = "",
) -> list[str]:
    """The arguments of one `vllm bench serve` (what follows `bench serve`) against the server at `base_url`
    serving `model`: the random dataset in `tokenizer`'s tokens at one concurrency, saving its result JSON."""
    return [
        "--backend", "vllm",
        "--base-url", base_url,
        "--endpoint", "/v1/completions",
        "--model", model,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", str(input_len),
        "--random-output-len", str(output_len),
        "--num-prompts", str(prompts),
        "--max-concurrency", str(concurrency),
        "--request-rate", "inf",
        "--ignore-eos",
        "--temperature", "0",  # greedy, as servelab asks; vllm bench otherwise leaves the server's default
        "--seed", str(seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,90,99",
        "--save-result",
        "--result-dir", str(result_dir),
        "--result-filename", f"vllm-bench-c{concurrency}{label}.json",
    ]


def vllm_bench_command(args: list[str], python: str = "python3") -> list[str]:
    """The same run as a command line, for the log and for anyone repeating it by hand."""
    return [python, "-m", "vllm.entrypoints.cli.main", "bench", "serve", *args]


class VllmBench:
    """`vllm bench serve` in one long-lived process (`vllm_bench_worker.py`, vLLM's own parser and `main`).

    Importing vLLM takes 15 to 20 s on the GPU host. Taking turns over many short rounds would pay that in every
    round; this pays it once. vLLM's output goes to `log_path`.
    """

    def __init__(self, python: str, log_path: Path, timeout_s: float = 1800.0) -> None:
        self.python = python
        self.log_path = log_path
        self.timeout_s = timeout_s
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> VllmBench:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(  # noqa: S603 - our own script, run by the interpreter the user named
                [self.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True,
            )
        try:
            self._reply(self.timeout_s)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin:
            process.stdin.close()
        stop_child(process)
        if process.stdout:
            process.stdout.close()

    def run(self, args: list[str]) -> dict:
        """One `vllm bench serve`; returns its saved result JSON."""
        return self.finish(self.start(args))

    def start(self, args: list[str]) -> Path:
        """Hand one `vllm bench serve` to the worker and return at once, with the path its result JSON will have;
        `finish` waits for it."""
        assert self._process is not None and self._process.stdin is not None, "use VllmBench as a context manager"
        log.info("vllm bench serve: %s", shlex.join(vllm_bench_command(args, self.python)))
        result = Path(args[args.index("--result-dir") + 1]) / args[args.index("--result-filename") + 1]
        result.parent.mkdir(parents=True, exist_ok=True)
        if self._process.poll() is not None:
            raise VllmBenchError(f"vllm bench serve: its process exited earlier (code {self._process.returncode}); see {self.log_path}")
        try:
            self._process.stdin.write(json.dumps(args) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError as error:
            raise VllmBenchError(f"vllm bench serve: its process is gone; see {self.log_path}") from error
        return result

    def replied(self) -> bool:
        """Whether the worker has answered the run in progress (finished or failed) and `finish` would not wait."""
        assert self._process is not None and self._process.stdout is not None
        readable, _, _ = select.select([self._process.stdout], [], [], 0)
        return bool(readable)

    def finish(self, result: Path) -> dict:
        """Wait for the run `start` handed over; its saved result JSON."""
        self._reply(self.timeout_s)
        return json.loads(result.read_text())

    def _reply(self, timeout_s: float) -> dict:
        assert self._process is not None and self._process.stdout is not None
        readable, _, _ = select.select([self._process.stdout], [], [], timeout_s)
        line = self._process.stdout.readline() if readable else ""
        if not line:
            state = "no reply" if self._process.poll() is None else f"exited with code {self._process.returncode}"
            stop_child(self._process)  # a late reply would otherwise answer the next run
            raise VllmBenchError(f"vllm bench serve ({self.python} {WORKER.name}): {state} within {timeout_s:.0f} s; see {self.log_path}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise VllmBenchError(f"vllm bench serve failed: {reply.get('error')}; see {self.log_path}")
        return reply


@dataclass(frozen=True)
class EngineWindow:
    """The engine's own means over one client's turn, from its Prometheus histograms (None where it keeps none)."""

    ttft_ms: float | None
    tpot_ms: float | None

    @classmethod
    def between(cls, before: engine_metrics.CounterSnapshot, after: engine_metrics.CounterSnapshot) -> EngineWindow:
        return cls(engine_metrics.engine_ttft_ms(before, after), engine_metrics.engine_tpot_ms(before, after))


@dataclass
class ServelabWindow:
    """One servelab point of the comparison: its records, and the engine's and the client's token counts over it."""

    records: list[RequestRecord]
    window_s: float
    server_tokens: float | None
    """Generated tokens by the engine's own Prometheus counter over the window."""
    received_tokens: int
    """Tokens servelab received over the same window (server-counted)."""
    engine: EngineWindow

    @property
    def measured(self) -> list[RequestRecord]:
        return [record for record in self.records if not record.warmup]

    @classmethod
    def between(
        cls, records: list[RequestRecord], before: engine_metrics.CounterSnapshot, after: engine_metrics.CounterSnapshot,
    ) -> ServelabWindow:
        server_tokens = None
        if before.generated_tokens is not None and after.generated_tokens is not None:
            server_tokens = after.generated_tokens - before.generated_tokens
        received = sum(record.output_tokens or 0 for record in records if record.ok)
        return cls(records, (after.t_ns - before.t_ns) / 1e9, server_tokens, received, EngineWindow.between(before, after))


def _snapshot(server: RunningServer) -> engine_metrics.CounterSnapshot:
    return engine_metrics.snapshot(server.base_url, server.metrics_path or "/metrics")


def _servelab_load(
    server: RunningServer, sweep: Sweep, concurrency: int, prompts: int, writer: JsonlWriter, seed: int,
    tokenizer: JsonTokenizer | ServerTokenizer | None, label: str, ceiling: ClientCeiling | None = None,
    window: PointWindow | None = None,
) -> list[RequestRecord]:
    """One closed-loop point of random-token prompts in the model's own tokens, driven as a sweep drives its points:
    in this process, or over sweep.client_processes processes (`workers.drive_point`, 'auto' against `ceiling`).

    No warm-up, as `vllm bench serve` has none (its ready check is off by default): each client's window then
    holds exactly its measured requests, and the engine's own means over the window are over those requests."""
    point_sweep = sweep.model_copy(
        update={
            "requests_per_point": prompts, "duration_s": None, "warmup_requests": 0,
            "languages": ("random",), "prompts_file": None,
        }
    )
    texts = prompts_for(server, point_sweep, "random", prompts, seed, tokenizer)
    records: list[RequestRecord] = []

    def keep(record: RequestRecord) -> None:
        records.append(record)
        writer.write(record)

    async def go() -> None:
        async with make_client(concurrency) as client:
            await drive_point(
                client, Target.for_server(server), texts, ConcurrencyLoad(values=(concurrency,)), concurrency, point_sweep,
                f"{server.name}/random/agreement-c{concurrency}{label}", keep, parts_dir=writer.path.parent / PARTS_DIR,
                ceiling=ceiling, window=window,
            )

    ensure_file_descriptors(concurrency)
    run_sync(go())
    return records


def servelab_point(
    server: RunningServer, sweep: Sweep, concurrency: int, prompts: int, writer: JsonlWriter, seed: int,
    tokenizer: JsonTokenizer | ServerTokenizer | None, label: str = "", ceiling: ClientCeiling | None = None,
) -> ServelabWindow:
    """servelab's turn: one point, its load bracketed by the engine's counters (read once every client is ready, and
    as soon as the last request has ended; the prompts are cut and the processes started before the first)."""
    readings: list[engine_metrics.CounterSnapshot] = []
    window = PointWindow(on_start=lambda: readings.append(_snapshot(server)), on_end=lambda: readings.append(_snapshot(server)))
    records = _servelab_load(server, sweep, concurrency, prompts, writer, seed, tokenizer, label, ceiling, window)
    before, after = readings
    return ServelabWindow.between(records, before, after)


def vllm_bench_turn(bench: VllmBench, server: RunningServer, args: list[str]) -> tuple[dict, EngineWindow]:
    """One `vllm bench serve`, bracketed by the engine's counters as servelab's turns are."""
    before = _snapshot(server)
    result = bench.run(args)
    return result, EngineWindow.between(before, _snapshot(server))


def wait_for_requests(server: RunningServer, count: int, done: Callable[[], bool], timeout_s: float = 120.0) -> float:
    """Poll the engine's own gauges until it holds at least `count` requests, or `done()` says the client that was
    to send them has finished; the seconds waited. A `VllmBenchError` if neither comes within `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        held = engine_metrics.requests_in_engine(engine_metrics.read_counters(server.base_url, server.metrics_path or "/metrics"))
        if held is None:
            raise VllmBenchError(f"{server.name}: its /metrics has no gauge of running requests to start the shared turn on")
        if held >= count or done():
            return time.monotonic() - start
        time.sleep(0.01)
    raise VllmBenchError(f"{server.name}: the other client's {count} requests did not reach the engine within {timeout_s:.0f} s")


def shared_turn(
    bench: VllmBench, server: RunningServer, sweep: Sweep, streams: int, prompts: int, writer: JsonlWriter, seed: int,
    tokenizer: JsonTokenizer | ServerTokenizer | None, bench_args: list[str], label: str,
    ceiling: ClientCeiling | None = None,
) -> tuple[ServelabWindow, dict, EngineWindow]:
    """Both clients at once, each with `streams` streams and `prompts` prompts: vllm bench first, and servelab as soon
    as the engine holds vllm bench's streams (vllm bench spends a moment on its tokenizer and dataset before it sends).
    Bracketed by the engine's counters, which then count both clients."""
    before = _snapshot(server)
    result_path = bench.start(bench_args)
    try:
        waited = wait_for_requests(server, streams, bench.replied)
        log.info("shared turn: vllm bench's %d streams on the engine after %.2f s; servelab starts", streams, waited)
        records = _servelab_load(server, sweep, streams, prompts, writer, seed, tokenizer, label, ceiling)
    finally:
        result = bench.finish(result_path)  # whatever happened here, the worker's reply to this run is read
    after = _snapshot(server)
    return ServelabWindow.between(records, before, after), result, EngineWindow.between(before, after)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _pooled_bench(results: list[dict]) -> dict[str, float | None]:
    """vllm bench's rounds as one run: tokens over summed durations, means weighted by completed requests."""
    if not results:
        return {"output_throughput": None, "mean_ttft_ms": None, "mean_tpot_ms": None}
    completed = sum(r["completed"] for r in results)
    return {
        "output_throughput": sum(r["total_output_tokens"] for r in results) / sum(r["duration"] for r in results),
        "mean_ttft_ms": sum(r["mean_ttft_ms"] * r["completed"] for r in results) / completed if completed else None,
        "mean_tpot_ms": sum(r["mean_tpot_ms"] * r["completed"] for r in results) / completed if completed else None,
    }


@dataclass
class AgreementTurn:
    """One client's turn at one concurrency, in the order the turns ran: what that client measured on its own.

    Side by side, the turns show how far the engine's own speed moved between windows, which no client can
    remove from a comparison made one window after another."""

    deployment: str
    concurrency: int
    """The load on the engine: all of one client's streams in mode 'turns', both clients' together in 'shared'."""
    mode: str
    round: int
    turn: int
    client: str
    requests: int
    output_tok_s: float | None
    mean_ttft_ms: float | None
    mean_tpot_ms: float | None
    engine_mean_ttft_ms: float | None
    """The engine's own mean TTFT over this turn's requests (its Prometheus histogram)."""
    engine_mean_tpot_ms: float | None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class ServelabFigures:
    """servelab's own figures over one or more windows: output tok/s over their summed durations, and the means."""

    requests: int
    output_tok_s: float
    mean_ttft_ms: float
    mean_tpot_ms: float

    @classmethod
    def of(cls, windows: list[ServelabWindow]) -> ServelabFigures:
        measured = [record for window in windows for record in window.measured if record.ok]
        seconds = sum(metrics.duration_s(window.measured) for window in windows)
        return cls(
            requests=len(measured),
            output_tok_s=sum(metrics.output_tokens(r) or 0 for r in measured) / seconds if seconds > 0 else float("nan"),
            mean_ttft_ms=_mean([v for v in map(metrics.ttft_ms, measured) if v is not None]),
            mean_tpot_ms=_mean([v for v in map(metrics.tpot_ms, measured) if v is not None]),
        )


def _servelab_turn(
    server: RunningServer, concurrency: int, mode: str, round_index: int, turn: int, window: ServelabWindow,
) -> AgreementTurn:
    ours = ServelabFigures.of([window])
    return AgreementTurn(
        deployment=server.name, concurrency=concurrency, mode=mode, round=round_index, turn=turn, client="servelab",
        requests=ours.requests, output_tok_s=round(ours.output_tok_s, 1), mean_ttft_ms=round(ours.mean_ttft_ms, 2),
        mean_tpot_ms=round(ours.mean_tpot_ms, 3),
        engine_mean_ttft_ms=_round(window.engine.ttft_ms, 2), engine_mean_tpot_ms=_round(window.engine.tpot_ms, 3),
    )


def _bench_turn(
    server: RunningServer, concurrency: int, mode: str, round_index: int, turn: int, result: dict, engine: EngineWindow,
) -> AgreementTurn:
    return AgreementTurn(
        deployment=server.name, concurrency=concurrency, mode=mode, round=round_index, turn=turn, client="vllm-bench",
        requests=result["completed"], output_tok_s=round(result["output_throughput"], 1),
        mean_ttft_ms=round(result["mean_ttft_ms"], 2), mean_tpot_ms=round(result["mean_tpot_ms"], 3),
        engine_mean_ttft_ms=_round(engine.ttft_ms, 2), engine_mean_tpot_ms=_round(engine.tpot_ms, 3),
    )


def over_engine(turns: list[AgreementTurn], client: str, metric: str) -> float | None:
    """A client's mean of `metric` ('ttft' or 'tpot') over the engine's own mean in the same turns, pooled by
    requests. Each turn is set against the engine in that very window, so a drift in the engine's speed between
    turns cancels; None where the engine keeps no such histogram."""
    pairs = [(getattr(t, f"mean_{metric}_ms"), getattr(t, f"engine_mean_{metric}_ms"), t.requests)
             for t in turns if t.client == client]
    if not pairs or any(ours is None or engine is None or engine <= 0 for ours, engine, _ in pairs):
        return None
    return sum(ours * n for ours, _, n in pairs) / sum(engine * n for _, engine, n in pairs)


def _agreement_row(
    server: RunningServer, concurrency: int, mode: str, streams: int, prompts: int, rounds: int,
    windows: list[ServelabWindow], bench_results: list[dict], turns: list[AgreementTurn],
) -> AgreementRow:
    ours = ServelabFigures.of(windows)
    window_s = sum(window.window_s for window in windows)
    server_tokens = None if any(w.server_tokens is None for w in windows) else sum(w.server_tokens or 0 for w in windows)
    server_tok_s = None if server_tokens is None or window_s <= 0 or mode == "shared" else server_tokens / window_s
    received_tok_s = sum(w.received_tokens for w in windows) / window_s if window_s > 0 and mode != "shared" else None
    bench = _pooled_bench(bench_results)
    return AgreementRow(
        deployment=server.name,
        concurrency=concurrency,
        mode=mode,
        streams_per_client=streams,
        prompts=prompts,
        rounds=rounds,
        servelab_output_tok_s=round(ours.output_tok_s, 1),
        vllm_bench_output_tok_s=bench["output_throughput"],
        output_tok_s_diff_pct=metrics.percent_off(ours.output_tok_s, bench["output_throughput"]),
        servelab_mean_ttft_ms=round(ours.mean_ttft_ms, 2),
        vllm_bench_mean_ttft_ms=bench["mean_ttft_ms"],
        ttft_diff_pct=metrics.percent_off(ours.mean_ttft_ms, bench["mean_ttft_ms"]),
        servelab_mean_tpot_ms=round(ours.mean_tpot_ms, 3),
        vllm_bench_mean_tpot_ms=bench["mean_tpot_ms"],
        tpot_diff_pct=metrics.percent_off(ours.mean_tpot_ms, bench["mean_tpot_ms"]),
        server_output_tok_s=None if server_tok_s is None else round(server_tok_s, 1),
        client_received_tok_s=None if received_tok_s is None else round(received_tok_s, 1),
        received_over_server=None if not server_tok_s or received_tok_s is None else round(received_tok_s / server_tok_s, 4),
        servelab_over_server=None if not server_tok_s else round(ours.output_tok_s / server_tok_s, 4),
        ttft_diff_vs_engine_pct=metrics.percent_off(over_engine(turns, "servelab", "ttft"), over_engine(turns, "vllm-bench", "ttft")),
        tpot_diff_vs_engine_pct=metrics.percent_off(over_engine(turns, "servelab", "tpot"), over_engine(turns, "vllm-bench", "tpot")),
    )


def _write_table(path: Path, rows: list) -> None:
    """Rewritten after every turn, so a comparison cut short keeps what it measured."""
    pd.DataFrame([asdict(row) for row in rows]).to_csv(path, index=False)


def compare_with_vllm_bench(
    server: RunningServer, sweep: Sweep, concurrencies: list[int], run_dir: Path, prompts_per_concurrency: int = 8,
    min_prompts: int = 64, python: str = "python3", rounds: int = 2, modes: tuple[str, ...] = ("turns",),
    vllm_bench: bool = True,
) -> pd.DataFrame:
    """The agreement table, also written to `<run>/agreement.csv`; each client's turns are in
    `<run>/agreement_turns.csv`, and vLLM's own results in `<run>/vllm-bench/`.

    Each concurrency is split into `rounds` rounds. In mode 'turns' the two clients take turns: servelab first in
    even rounds, vllm bench first in odd ones. The engine's speed drifts between windows (on the H200 its step time
    doubled for 10 s at a time, with the GPU's clock unchanged); taking turns puts both clients on both sides of a
    drift, and each is then pooled over its rounds. Every turn is also bracketed by the engine's own latency
    histograms, so each client's TTFT and TPOT can be set against the engine in its own window
    (`ttft_diff_vs_engine_pct`, `tpot_diff_vs_engine_pct`), which the drift does not reach. In mode 'shared' each
    round runs both clients at once with half the streams each (concurrencies of 2 and more), so the drift reaches
    both alike, output tok/s included.

    servelab's turns run over sweep.client_processes processes as a sweep's points do ('auto' against this host's
    calibration in the run's manifest). Without `vllm_bench`, only servelab's turns run, each against the engine's
    counters (mode 'turns' only).
    """
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown comparison mode(s) {unknown}: choose from {list(MODES)}")
    if not vllm_bench and "shared" in modes:
        raise ValueError("the shared mode runs servelab beside vllm bench serve: without vllm bench, use modes=('turns',)")
    ceiling = ceiling_of_run(run_dir)
    rows: list[AgreementRow] = []
    turns: list[AgreementTurn] = []
    bench_dir = run_dir / "vllm-bench"
    with (
        JsonlWriter(run_dir / AGREEMENT_REQUESTS_FILE) as writer,
        prompt_tokenizers([server]) as tokenizers,
        VllmBench(python, run_dir / "logs" / "vllm-bench.log") if vllm_bench else contextlib.nullcontext() as bench,
    ):
        for index, concurrency in enumerate(concurrencies):
            for mode in modes:
                if mode == "shared" and concurrency < 2:
                    log.info("no shared turns at concurrency %d: two clients need a stream each", concurrency)
                    continue
                streams = concurrency if mode == "turns" else concurrency // 2
                prompts = max(min_prompts, prompts_per_concurrency * concurrency)
                per_round = max(streams, -(-prompts // rounds))
                windows: list[ServelabWindow] = []
                bench_results: list[dict] = []
                mode_turns: list[AgreementTurn] = []
                for round_index in range(rounds):
                    seed = sweep.seed + 100 * index + round_index
                    label = ("" if mode == "turns" else "-shared") + (f"-r{round_index}" if rounds > 1 else "")
                    args = vllm_bench_args(server.base_url, server.served_model, server.model_path, streams, per_round,
                                           sweep.input_tokens, sweep.output_tokens, bench_dir, seed, label)
                    try:
                        if mode == "shared":
                            assert bench is not None
                            window, result, engine = shared_turn(bench, server, sweep, streams, per_round, writer, seed,
                                                                 tokenizers[server.name], args, label, ceiling)
                            windows.append(window)
                            bench_results.append(result)
                            mode_turns += [
                                _servelab_turn(server, concurrency, mode, round_index, len(turns) + len(mode_turns), window),
                                _bench_turn(server, concurrency, mode, round_index, len(turns) + len(mode_turns) + 1, result, engine),
                            ]
                            continue
                        order = ("servelab", "vllm-bench") if round_index % 2 == 0 else ("vllm-bench", "servelab")
                        for client in order if bench is not None else ("servelab",):
                            turn = len(turns) + len(mode_turns)
                            if client == "servelab":
                                window = servelab_point(server, sweep, streams, per_round, writer, seed, tokenizers[server.name],
                                                        label, ceiling)
                                windows.append(window)
                                mode_turns.append(_servelab_turn(server, concurrency, mode, round_index, turn, window))
                            else:
                                assert bench is not None
                                result, engine = vllm_bench_turn(bench, server, args)
                                bench_results.append(result)
                                mode_turns.append(_bench_turn(server, concurrency, mode, round_index, turn, result, engine))
                    except VllmBenchError as error:
                        log.error("vllm bench serve failed at concurrency %d (%s): %s", concurrency, mode, error)
                    finally:
                        _write_table(run_dir / AGREEMENT_TURNS_FILE, turns + mode_turns)
                turns += mode_turns
                row = _agreement_row(server, concurrency, mode, streams, per_round * rounds, rounds, windows, bench_results, mode_turns)
                log.info("agreement at c=%d (%s): %s", concurrency, mode, row)
                rows.append(row)
                _write_table(run_dir / AGREEMENT_FILE, rows)
    return pd.DataFrame([asdict(row) for row in rows])


def _read_table(path: Path) -> pd.DataFrame:
    """A comparison table; those written before the shared mode existed took turns only."""
    if not path.exists():
        return pd.DataFrame()
    table = pd.read_csv(path)
    if "mode" not in table.columns:
        table.insert(table.columns.get_loc("concurrency") + 1, "mode", "turns")
    return table


def read_agreement(run_dir: Path) -> pd.DataFrame:
    return _read_table(run_dir / AGREEMENT_FILE)


def read_agreement_turns(run_dir: Path) -> pd.DataFrame:
    return _read_table(run_dir / AGREEMENT_TURNS_FILE)

