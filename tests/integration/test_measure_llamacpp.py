"""The measurement core against the real embedded llama-server: streaming, usage, ignore_eos, prompt lengths
by the server's tokenizer, and servelab's output tok/s against the engine's own token counter.

Kept small (tens of short requests): the machine has two cores and other tests share the engine.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from servelab.analyse.metrics import duration_s, output_tokens_per_s, summarize
from servelab.checks.agreement import wait_for_requests
from servelab.clock import now_ns
from servelab.errors import VllmBenchError
from servelab.measure.clients import Target, make_client, send
from servelab.measure.load import run_point
from servelab.measure.prompts import Prompt, build_prompts
from servelab.measure.tokens import ServerTokenizer, flag_token_counts
from servelab.observe import counters as engine_metrics
from servelab.params import ConcurrencyLoad, RateLoad, Sweep
from servelab.records import RequestRecord

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def target(embedded_server) -> Target:
    return Target(
        deployment=embedded_server.name,
        framework="llamacpp",
        model=embedded_server.model,
        served_model=embedded_server.served_model,
        base_url=embedded_server.base_url,
        api_flavour="openai",
    )


@pytest.fixture(scope="module")
def server_tokenizer(embedded_server):
    counter = ServerTokenizer(embedded_server.base_url)
    yield counter
    counter.close()


def _send_one(target: Target, prompt: Prompt, api: str, output_tokens: int, **kwargs) -> RequestRecord:
    async def go() -> RequestRecord:
        async with make_client(2) as client:
            record = RequestRecord(
                "it", 0, target.deployment, target.framework, target.model, prompt.language, False, 0
            )
            return await send(
                client,
                target,
                prompt,
                api=api,
                output_tokens=output_tokens,
                ignore_eos=True,  # type: ignore[arg-type]
                timeout_s=120,
                record=record,
                **kwargs,
            )

    return asyncio.run(go())


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_streamed_request_with_ignore_eos_gives_exactly_max_tokens_and_usage(target, api):
    prompt = Prompt("Write one word.", "en", 4)  # a prompt the model would answer in a few tokens
    record = _send_one(target, prompt, api, 24)
    assert record.ok, record.error_message
    assert record.http_status == 200
    assert (record.output_tokens, record.token_source) == (24, "server")
    assert record.server_timings is not None and record.server_timings["predicted_n"] == 24
    assert record.prompt_tokens and record.prompt_tokens > 0
    assert 1 <= record.chunk_count <= 24
    assert (
        record.actual_send_ns
        < record.first_token_ns
        == record.chunk_ns[0]
        <= record.chunk_ns[-1]
        <= record.end_ns
    )
    assert record.output_chars > 0


def test_a_korean_answer_keeps_the_token_count_when_chunks_carry_several_tokens(target):
    record = _send_one(target, Prompt("한국어로 짧게 인사해 주세요.", "ko", 10), "chat", 16)
    assert record.ok, record.error_message
    assert record.output_tokens == 16


def test_prompts_built_with_the_server_tokenizer_have_the_asked_length(target, server_tokenizer):
    sweep = Sweep(load=(ConcurrencyLoad(values=(1,)),), input_tokens=48)
    for language in ("en", "zh"):
        prompt = build_prompts(sweep, language, count=1, seed=0, count_tokens=server_tokenizer.count)[0]
        assert prompt.token_count == server_tokenizer.count(prompt.text)
        assert 46 <= prompt.token_count <= 48  # a multi-byte character may need several tokens to fit
        record = _send_one(target, prompt, "completions", 2)
        assert record.ok, record.error_message
        # The server adds its BOS token to the prompt's own tokens, at most.
        assert record.prompt_tokens - prompt.token_count in (0, 1)


def test_output_tok_s_agrees_with_the_engines_own_counter(target, embedded_server, server_tokenizer):
    sweep = Sweep(
        load=(ConcurrencyLoad(values=(2,)),),
        input_tokens=32,
        output_tokens=32,
        requests_per_point=8,
        warmup_requests=0,
        seed=11,
    )
    prompts = build_prompts(sweep, "en", count=8, seed=11, count_tokens=server_tokenizer.count)
    records: list[RequestRecord] = []

    async def go():
        async with make_client(2) as client:
            # The engine's window: from when its counter was read before the point (nothing is generating
            # then) to just before it is read after the point.
            before = engine_metrics.snapshot(embedded_server.base_url)
            start_ns = now_ns()
            outcome = await run_point(
                client, target, prompts, sweep.load[0], 2, sweep, "it/agreement", records.append
            )
            return before, start_ns, outcome, engine_metrics.snapshot(embedded_server.base_url)

    before, start_ns, outcome, after = asyncio.run(go())
    assert (outcome.requests, outcome.errors) == (8, 0), [r.error_message for r in records if not r.ok]
    # Token for token: the usage of every response adds up to what the engine counted in the window.
    engine_tokens = after.generated_tokens - before.generated_tokens
    assert sum(r.output_tokens for r in records) == engine_tokens == 8 * 32
    assert all(r.server_timings["predicted_n"] == r.output_tokens for r in records)
    ours = output_tokens_per_s(records, duration_s(records))
    engine = engine_tokens / ((after.t_ns - start_ns) / 1e9)
    print(f"servelab {ours:.1f} tok/s, engine counter {engine:.1f} tok/s, difference {100 * (ours / engine - 1):+.2f} %")
    assert ours == pytest.approx(engine, rel=0.03)
    summary = summarize(records).set_index(["metric", "stat"]).value
    assert summary["output_tok_s", "value"] == pytest.approx(ours)
    assert summary["tpot_ms", "count"] == 8
    # The engine's own time per output token over the same window (llama.cpp's generation seconds over its tokens),
    # which the GPU comparison sets each client against. llama.cpp counts the first token among the generated
    # ones, and the client sees each token a little after the engine made it, so they differ by a few percent.
    engine_tpot = engine_metrics.engine_tpot_ms(before, after)
    print(f"servelab mean TPOT {summary['tpot_ms', 'mean']:.2f} ms, llama.cpp's own {engine_tpot:.2f} ms")
    assert engine_tpot == pytest.approx(summary["tpot_ms", "mean"], rel=0.10)
    assert engine_metrics.engine_ttft_ms(before, after) is None, "llama.cpp keeps no TTFT histogram"
    flags = flag_token_counts(records, expected_output_tokens=32)
    assert not set(flags.flag) & {"not_expected_length", "chunks_exceed_tokens", "no_server_count"}


def test_the_servers_tokenizer_recounts_the_streamed_text_to_about_the_server_count(target, server_tokenizer):
    record = _send_one(
        target, Prompt("Tell me about rivers.", "en", 5), "completions", 24, token_counter=server_tokenizer
    )
    assert record.ok, record.error_message
    assert record.token_source == "server"
    # Decoding then encoding again may merge or split a token or two, never more.
    assert abs(record.tokenizer_output_tokens - 24) <= 2
    assert flag_token_counts([record]).query("flag == 'server_vs_tokenizer'").empty


def test_an_open_loop_point_runs_on_its_schedule_against_the_engine(target):
    sweep = Sweep(
        load=(RateLoad(kind="poisson", values=(4.0,)),),
        input_tokens=16,
        output_tokens=8,
        requests_per_point=6,
        warmup_requests=1,
        seed=3,
    )
    records: list[RequestRecord] = []

    async def go():
        async with make_client(8) as client:
            prompts = build_prompts(sweep, "es", count=7, seed=3)
            return await run_point(client, target, prompts, sweep.load[0], 4.0, sweep, "it/open", records.append)

    outcome = asyncio.run(go())
    measured = [r for r in records if not r.warmup]
    assert (outcome.requests, outcome.errors, len(records)) == (6, 0, 7)
    assert all(r.output_tokens == 8 for r in records)
    assert all(r.actual_send_ns >= r.intended_send_ns >= outcome.start_ns for r in measured)
    assert outcome.lag_p99_ms is not None and outcome.lag_p99_ms >= 0


def test_the_sweep_cuts_prompts_with_the_servers_tokenizer_when_the_model_has_no_tokenizer_json(embedded_server):
    from servelab.measure.sweep import prompt_tokenizer

    tokenizer = prompt_tokenizer(embedded_server)  # a GGUF: no tokenizer.json beside it
    assert isinstance(tokenizer, ServerTokenizer)
    try:
        sweep = Sweep(load=(ConcurrencyLoad(values=(1,)),), input_tokens=40)
        for language in ("ko", "zh", "random"):
            prompts = build_prompts(sweep, language, count=3, seed=4, tokenizer=tokenizer)
            assert all(38 <= p.token_count <= 40 for p in prompts), (language, [p.token_count for p in prompts])
            assert [tokenizer.count(p.text) for p in prompts] == [p.token_count for p in prompts]
    finally:
        tokenizer.close()


def test_a_shared_turn_starts_once_the_engine_holds_the_other_clients_requests(target, embedded_server):
    # The comparison's shared mode starts servelab when the engine's own gauges show vllm bench's streams: here the
    # other client is a thread sending one long request, and the engine is the real llama-server.
    with ThreadPoolExecutor(1) as other:
        sending = other.submit(_send_one, target, Prompt("Count to one hundred.", "en", 6), "completions", 96)
        waited = wait_for_requests(embedded_server, 1, sending.done, timeout_s=60)
        still_running = not sending.done()
        assert sending.result().ok
    assert still_running, "the wait ended on the engine's gauge, not on the other client finishing"
    print(f"the request was on the engine after {waited:.3f} s")
    assert engine_metrics.requests_in_engine(engine_metrics.read_counters(embedded_server.base_url)) == 0
    # Nothing sent and nothing finished: it gives up after its timeout, naming what it waited for.
    with pytest.raises(VllmBenchError, match="the other client's 1 requests did not reach the engine within 0 s"):
        wait_for_requests(embedded_server, 1, lambda: False, timeout_s=0.3)
    assert wait_for_requests(embedded_server, 1, lambda: True) < 1.0, "a client that has finished is not waited for"
