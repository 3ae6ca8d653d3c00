"""The streaming clients against a small real HTTP server that replays recorded response bodies."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path

import pytest
from servelab.measure.clients import Target, make_client, request_body, send
from servelab.measure.prompts import Prompt
from servelab.measure.tokens import JsonTokenizer
from servelab.records import ERROR_CLASSES, RequestRecord

RECORDED = Path(__file__).parents[1] / "data" / "recorded"
PROMPT = Prompt("The capital of France is", "en", 6)


# ------------------------------------------------------------------------------------------ the server
def _pieces(body: bytes, ndjson: bool) -> list[bytes]:
    """A recorded body cut where the server wrote: one SSE event or one NDJSON line per piece."""
    if ndjson:
        return [line + b"\n" for line in body.splitlines() if line.strip()]
    return [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]


class Replay(BaseHTTPRequestHandler):
    """POST /<scenario>/<argument>/<delay ms>/<API path>: serves tests/data/recorded/<argument> as the scenario says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.bodies.append((self.path, json.loads(self.rfile.read(length))))  # type: ignore[attr-defined]
        _, scenario, argument, delay_ms, *_ = self.path.split("/")
        if getattr(self, "drop_next", False):
            # Like llama-server after a stream: the connection was kept open but the next request is not answered.
            self.close_connection = True
            return
        self.drop_next = scenario == "dropnext"
        delay = float(delay_ms) / 1000
        if scenario == "status":
            code, name = argument.split(":")
            body = (RECORDED / name).read_bytes()
            self.send_response(int(code))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if scenario == "inline":
            body = bytes.fromhex(argument)
        else:
            body = (RECORDED / argument).read_bytes()
        ndjson = argument.endswith(".ndjson")
        pieces = _pieces(body, ndjson)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson" if ndjson else "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if scenario == "fragments":
            # Seven bytes at a time: events, JSON and UTF-8 characters all split across reads.
            pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        for index, piece in enumerate(pieces):
            if scenario in ("reset", "truncate", "stall") and index == 2:
                if scenario == "stall":
                    time.sleep(3)
                if scenario == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            self._chunk(piece)
            if delay:
                time.sleep(delay)
        self.wfile.write(b"0\r\n\r\n")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the reset and stall scenarios break their own connections on purpose


@pytest.fixture(scope="module")
def replay_server():
    server = QuietServer(("127.0.0.1", 0), Replay)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _target(server: ThreadingHTTPServer, path: str, flavour: str = "openai") -> Target:
    host, port = server.server_address[:2]
    return Target(
        "dep", "llamacpp", "reported-model", "served-model", f"http://{host}:{port}/{path}", flavour
    )  # type: ignore[arg-type]


def _record(index: int = 0) -> RequestRecord:
    return RequestRecord("p", index, "dep", "llamacpp", "reported-model", "en", False, intended_send_ns=0)


def _send(
    target: Target, api: str = "completions", timeout_s: float = 10.0, **kwargs: object
) -> RequestRecord:
    async def go() -> RequestRecord:
        async with make_client(4) as client:
            return await send(
                client,
                target,
                PROMPT,
                api=api,
                output_tokens=8,
                ignore_eos=True,  # type: ignore[arg-type]
                timeout_s=timeout_s,
                record=_record(),
                **kwargs,
            )  # type: ignore[arg-type]

    return asyncio.run(go())


def _events(name: str) -> list[dict]:
    """The recorded SSE events, parsed independently of the client."""
    text = (RECORDED / name).read_text(encoding="utf-8")
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def _content_texts(name: str) -> list[str]:
    texts = []
    for event in _events(name):
        for choice in event.get("choices", []):
            text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if text:
                texts.append(text)
    return texts


def _usage(name: str) -> dict:
    return next(e["usage"] for e in _events(name) if e.get("usage"))


def _assert_ordered(record: RequestRecord) -> None:
    assert record.actual_send_ns > 0
    assert record.first_token_ns == record.chunk_ns[0]
    assert record.actual_send_ns <= record.chunk_ns[0]
    assert all(a <= b for a, b in pairwise(record.chunk_ns))
    assert record.chunk_ns[-1] <= record.end_ns


# ------------------------------------------------------------------------------------------ OpenAI SSE
def test_completions_stream_fills_the_record_from_a_recorded_llamacpp_stream(replay_server):
    record = _send(_target(replay_server, "replay/llamacpp_completions.sse/20"))
    texts = _content_texts("llamacpp_completions.sse")
    assert record.ok, record.error_message
    assert record.http_status == 200
    assert record.chunk_count == len(texts) == len(record.chunk_ns)
    assert record.output_chars == len("".join(texts))
    assert record.output_tokens == _usage("llamacpp_completions.sse")["completion_tokens"] == 8
    assert record.prompt_tokens == _usage("llamacpp_completions.sse")["prompt_tokens"]
    assert record.token_source == "server"
    assert record.server_timings is not None and record.server_timings["predicted_n"] == 8
    assert record.prompt_chars == len(PROMPT.text)
    _assert_ordered(record)
    # The server slept 20 ms after each event, so the last content chunk cannot come sooner than this.
    assert record.chunk_ns[-1] - record.actual_send_ns >= (len(texts) - 1) * 20_000_000


def test_completions_request_carries_served_model_usage_ignore_eos_and_greedy_decoding(replay_server):
    _send(_target(replay_server, "replay/llamacpp_completions.sse/0"))
    path, body = replay_server.bodies[-1]
    assert path.endswith("/v1/completions")
    assert body["model"] == "served-model"
    assert body["prompt"] == PROMPT.text
    assert body["max_tokens"] == 8
    assert body["ignore_eos"] is True
    assert body["temperature"] == 0
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_ignore_eos_is_left_out_when_not_asked():
    target = Target("d", "vllm", "m", "m", "http://x", "openai")
    assert "ignore_eos" not in request_body(target, "hi", api="chat", output_tokens=4, ignore_eos=False)


def test_chat_stream_counts_only_chunks_with_content(replay_server):
    record = _send(_target(replay_server, "replay/llamacpp_chat.sse/0"), api="chat")
    path, body = replay_server.bodies[-1]
    assert path.endswith("/v1/chat/completions")
    assert body["messages"] == [{"role": "user", "content": PROMPT.text}]
    assert record.ok, record.error_message
    # The role-only chunk and the finish_reason chunk carry no text and are not chunks of output.
    assert (
        record.chunk_count == len(_content_texts("llamacpp_chat.sse")) < len(_events("llamacpp_chat.sse")) - 1
    )
    assert record.output_tokens == 8
    _assert_ordered(record)


def test_several_tokens_in_one_chunk_keep_the_server_count_apart_from_the_chunk_count(replay_server):
    record = _send(_target(replay_server, "replay/llamacpp_chat_ko.sse/0"), api="chat")
    assert record.ok, record.error_message
    assert record.chunk_count == 2
    assert record.output_tokens == 8
    assert record.token_source == "server"


def test_vllm_stream_with_null_usage_and_a_final_usage_chunk(replay_server):
    record = _send(_target(replay_server, "replay/vllm_chat.sse/0"), api="chat")
    assert record.ok, record.error_message
    assert record.chunk_count == 4
    assert record.output_chars == len("你好！有什么可以帮你的吗？")
    assert (record.prompt_tokens, record.output_tokens) == (21, 8)


@pytest.mark.parametrize("name", ["llamacpp_completions.sse", "llamacpp_chat_ko.sse", "ollama_chat.ndjson"])
def test_events_split_across_reads_parse_the_same_as_whole_events(replay_server, name):
    flavour = "ollama" if name.endswith(".ndjson") else "openai"
    whole = _send(_target(replay_server, f"replay/{name}/0", flavour), api="chat")
    split = _send(_target(replay_server, f"fragments/{name}/0", flavour), api="chat")
    assert whole.ok and split.ok, (whole.error_message, split.error_message)
    assert (split.chunk_count, split.output_chars, split.output_tokens, split.prompt_tokens) == (
        whole.chunk_count,
        whole.output_chars,
        whole.output_tokens,
        whole.prompt_tokens,
    )


# ------------------------------------------------------------------------------------------ Ollama NDJSON
def test_generate_recorded_ollama_shapes(replay_server):
    record = _send(_target(replay_server, "replay/ollama_generate.ndjson/5", "ollama"))
    path, body = replay_server.bodies[-1]
    assert path.endswith("/api/generate")
    assert body["prompt"] == PROMPT.text and body["stream"] is True
    assert body["options"] == {"num_predict": 8, "temperature": 0}
    assert record.ok, record.error_message
    assert record.chunk_count == 8
    assert record.output_chars == len("The sky is blue because of Rayleigh scattering")
    assert (record.output_tokens, record.prompt_tokens, record.token_source) == (10, 26, "server")
    assert record.server_timings == {
        "total_duration": 226818083,
        "load_duration": 6338219,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 80079000,
        "eval_count": 10,
        "eval_duration": 139232710,
        "done_reason": "length",
    }
    _assert_ordered(record)


def test_chat_recorded_ollama_shapes(replay_server):
    record = _send(_target(replay_server, "replay/ollama_chat.ndjson/0", "ollama"), api="chat")
    path, body = replay_server.bodies[-1]
    assert path.endswith("/api/chat")
    assert body["messages"] == [{"role": "user", "content": PROMPT.text}]
    assert record.ok, record.error_message
    assert record.chunk_count == 6
    assert record.output_chars == len("안녕하세요! 무엇을 도와드릴까요?")
    assert (record.output_tokens, record.prompt_tokens) == (14, 31)
    assert record.server_timings["eval_duration"] == 335599000


def test_error_inside_the_stream_recorded_ollama_shapes(replay_server):
    record = _send(_target(replay_server, "replay/ollama_generate_stream_error.ndjson/0", "ollama"))
    assert record.error_class == "protocol"
    assert "unexpected EOF" in record.error_message
    assert record.chunk_count == 2
    assert record.end_ns >= record.chunk_ns[-1]


def test_unknown_model_recorded_ollama_shapes(replay_server):
    record = _send(_target(replay_server, "status/404:ollama_model_not_found.json/0", "ollama"))
    assert (record.error_class, record.http_status) == ("http_4xx", 404)
    assert "not found" in record.error_message


# ------------------------------------------------------------------------------------------ failures
@pytest.mark.parametrize(("status", "expected"), [(429, "http_429"), (400, "http_4xx"), (503, "http_5xx")])
def test_http_errors_are_classified_by_status(replay_server, status, expected):
    record = _send(_target(replay_server, f"status/{status}:ollama_model_not_found.json/0"))
    assert (record.error_class, record.http_status) == (expected, status)
    assert record.end_ns >= record.actual_send_ns > 0
    assert not record.chunk_ns


def test_refused_connection_is_a_connect_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    record = _send(Target("d", "f", "m", "m", f"http://127.0.0.1:{port}", "openai"))
    assert record.error_class == "connect"
    assert record.http_status is None


def test_a_stalled_stream_times_out_and_keeps_what_arrived(replay_server):
    record = _send(_target(replay_server, "stall/llamacpp_completions.sse/0"), timeout_s=0.5)
    assert record.error_class == "timeout"
    assert record.chunk_count == 2
    assert record.end_ns > record.chunk_ns[-1]


def test_a_reset_mid_stream_is_connection_reset_and_not_sent_again(replay_server):
    record = _send(_target(replay_server, "reset/llamacpp_completions.sse/0"))
    assert record.error_class == "connection_reset", record.error_message
    assert record.retries == 0


def test_a_connection_closed_before_any_response_is_retried_on_a_fresh_one(replay_server):
    target = _target(replay_server, "dropnext/llamacpp_completions.sse/0")

    async def go() -> list[RequestRecord]:
        async with make_client(1) as client:
            return [
                await send(
                    client,
                    target,
                    PROMPT,
                    api="completions",
                    output_tokens=8,
                    ignore_eos=True,
                    timeout_s=10,
                    record=_record(i),
                )
                for i in range(3)
            ]

    first, second, third = asyncio.run(go())
    assert first.ok and second.ok and third.ok, [r.error_message for r in (first, second, third)]
    assert (first.retries, second.retries, third.retries) == (0, 1, 1)
    assert second.output_tokens == 8


def test_a_body_cut_short_is_connection_reset(replay_server):
    record = _send(_target(replay_server, "truncate/llamacpp_completions.sse/0"))
    assert record.error_class == "connection_reset", record.error_message


def _inline(events: list[str]) -> str:
    return "inline/" + "".join(f"data: {e}\n\n" for e in events).encode().hex()


def test_a_stream_without_done_finish_or_usage_is_a_protocol_error(replay_server):
    record = _send(_target(replay_server, _inline(['{"choices":[{"text":"a"}]}']) + "/0"))
    assert record.error_class == "protocol"
    assert record.chunk_count == 1


def test_an_event_that_is_not_json_is_a_protocol_error(replay_server):
    record = _send(
        _target(replay_server, _inline(['{"choices":[{"text":"a"}]}', "{not json", "[DONE]"]) + "/0")
    )
    assert record.error_class == "protocol"


def test_an_error_event_takes_the_class_of_its_code(replay_server):
    events = ['{"choices":[{"text":"a"}]}', '{"error":{"code":503,"message":"engine overloaded"}}', "[DONE]"]
    record = _send(_target(replay_server, _inline(events) + "/0"))
    assert record.error_class == "http_5xx"
    assert "engine overloaded" in record.error_message


def test_a_stream_without_any_text_is_empty(replay_server):
    events = [
        '{"choices":[{"text":"","finish_reason":"stop"}],"usage":{"completion_tokens":0,"prompt_tokens":3}}',
        "[DONE]",
    ]
    record = _send(_target(replay_server, _inline(events) + "/0"))
    assert record.error_class == "empty"


def test_every_failure_class_is_a_known_error_class():
    from servelab.measure import clients

    assert {clients._class_of_status(s) for s in (400, 404, 429, 500, 503)} <= set(ERROR_CLASSES)


# ------------------------------------------------------------------------------------------ tokens
@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> JsonTokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "Paris", "is", "a", "city", "."]
    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return JsonTokenizer(path)


NO_USAGE = [
    '{"choices":[{"text":" Paris is"}]}',
    '{"choices":[{"text":" a city."}]}',
    '{"choices":[{"text":"","finish_reason":"length"}]}',
    "[DONE]",
]


def test_without_server_usage_the_tokenizer_counts(replay_server, word_tokenizer):
    record = _send(_target(replay_server, _inline(NO_USAGE) + "/0"), token_counter=word_tokenizer)
    assert record.ok, record.error_message
    assert (record.output_tokens, record.token_source, record.tokenizer_output_tokens) == (5, "tokenizer", 5)


def test_without_usage_or_tokenizer_the_chunks_count(replay_server):
    record = _send(_target(replay_server, _inline(NO_USAGE) + "/0"))
    assert (record.output_tokens, record.token_source) == (2, "chunks")


def test_with_server_usage_the_tokenizer_count_is_kept_beside_it(replay_server, word_tokenizer):
    record = _send(_target(replay_server, "replay/llamacpp_completions.sse/0"), token_counter=word_tokenizer)
    assert record.token_source == "server"
    assert record.tokenizer_output_tokens is not None


# ------------------------------------------------------------------------------------------ the rest
def test_cancelling_a_request_records_it_and_lets_the_cancellation_through(replay_server):
    record = _record()

    async def go() -> None:
        async with make_client(1) as client:
            task = asyncio.ensure_future(
                send(
                    client,
                    _target(replay_server, "stall/llamacpp_completions.sse/0"),
                    PROMPT,
                    api="completions",
                    output_tokens=8,
                    ignore_eos=True,
                    timeout_s=30,
                    record=record,
                )
            )
            while record.chunk_count < 2:
                await asyncio.sleep(0.01)
            task.cancel()
            await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())
    assert record.error_class == "cancelled"
    assert record.chunk_count == 2


def test_make_client_refuses_an_empty_pool():
    with pytest.raises(ValueError, match="max_connections"):
        make_client(0)


def test_many_concurrent_streams_share_one_pool(replay_server):
    target = _target(replay_server, "replay/llamacpp_completions.sse/2")

    async def go() -> list[RequestRecord]:
        async with make_client(4) as client:
            return await asyncio.gather(
                *[
                    send(
                        client,
                        target,
                        PROMPT,
                        api="completions",
                        output_tokens=8,
                        ignore_eos=True,
                        timeout_s=30,
                        record=_record(i),
                    )
                    for i in range(16)
                ]
            )

    records = asyncio.run(go())
    assert all(r.ok for r in records), [r.error_message for r in records if not r.ok]
    assert {r.output_tokens for r in records} == {8}
