"""Token accounting: local and server tokenizers, the fallback order, and the disagreement flags."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from servelab.measure.tokens import (
    FLAG_COLUMNS,
    JsonTokenizer,
    ServerTokenizer,
    flag_token_counts,
    output_tokens,
    summarize_token_flags,
)
from servelab.records import RequestRecord


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> JsonTokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "the", "sky", "is", "blue", "."]
    model = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.add_special_tokens(["<s>"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    model.save(str(path))
    return JsonTokenizer(path)


def test_a_tokenizer_json_counts_without_special_tokens(tokenizer):
    assert tokenizer.count("the sky is blue.") == 5
    assert asyncio.run(tokenizer.count_async("the sky")) == 2
    assert tokenizer.decode(tokenizer.encode("the sky")) == "the sky"
    assert tokenizer.ordinary_ids() == [0, 1, 2, 3, 4, 5]  # '<s>' (id 6) is special


def test_a_missing_tokenizer_json_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        JsonTokenizer(tmp_path / "nope.json")


class Tokenize(BaseHTTPRequestHandler):
    """/tokenize answering with one token per word, as llama.cpp ('content') or vLLM ('prompt') is asked."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)  # type: ignore[attr-defined]
        text = body.get("content", body.get("prompt"))
        status, answer = (
            (200, {"tokens": list(range(len(text.split())))}) if text != "fail" else (500, {"error": "x"})
        )
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def tokenize_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Tokenize)
    server.daemon_threads = True
    server.bodies = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_server_tokenizer_asks_llamacpp_without_special_tokens(tokenize_server):
    counter = ServerTokenizer(f"http://127.0.0.1:{tokenize_server.server_address[1]}/")
    assert counter.count("one two three") == 3
    assert asyncio.run(counter.count_async("one two")) == 2
    assert tokenize_server.bodies[-1] == {"content": "one two", "add_special": False}
    counter.close()


def test_the_server_tokenizer_asks_vllm_with_the_model(tokenize_server):
    counter = ServerTokenizer(
        f"http://127.0.0.1:{tokenize_server.server_address[1]}", flavour="vllm", model="m"
    )
    assert counter.count("a b") == 2
    assert tokenize_server.bodies[-1] == {"prompt": "a b", "add_special_tokens": False, "model": "m"}
    with pytest.raises(RuntimeError, match="HTTP 500"):
        counter.count("fail")


def record(
    index: int,
    *,
    server: int | None,
    chunks: int,
    tokenizer: int | None = None,
    ok: bool = True,
    warmup: bool = False,
    source: str | None = None,
) -> RequestRecord:
    r = RequestRecord(
        "p",
        index,
        "d",
        "f",
        "m",
        "en",
        warmup,
        0,
        chunk_count=chunks,
        output_tokens=server,
        tokenizer_output_tokens=tokenizer,
        error_class=None if ok else "timeout",
    )
    r.token_source = source or ("server" if server is not None else "none")
    return r


def test_output_tokens_prefer_the_server_then_the_tokenizer_then_the_chunks():
    assert output_tokens(record(0, server=8, chunks=3, tokenizer=9)) == 8
    assert output_tokens(record(0, server=None, chunks=3, tokenizer=9)) == 9
    assert output_tokens(record(0, server=None, chunks=3)) == 3
    assert output_tokens(record(0, server=None, chunks=0)) is None


def test_flags_name_each_disagreement():
    records = [
        record(0, server=16, chunks=16, tokenizer=16),  # all agree: no flag
        record(1, server=16, chunks=5),  # several tokens per chunk
        record(2, server=16, chunks=20),  # more chunks than tokens
        record(3, server=16, chunks=16, tokenizer=25),  # tokenizer far off
        record(4, server=16, chunks=16, tokenizer=17),  # within tolerance
        record(5, server=10, chunks=10),  # shorter than asked
        record(6, server=None, chunks=16, tokenizer=16, source="tokenizer"),  # no server count
        record(7, server=3, chunks=30, ok=False),  # failed: not checked
        record(8, server=3, chunks=30, warmup=True),  # warm-up: not checked
    ]
    flags = flag_token_counts(records, expected_output_tokens=16)
    assert list(flags.columns) == FLAG_COLUMNS
    found = sorted(zip(flags.request_index, flags.flag, strict=True))
    assert found == [
        (1, "multi_token_chunks"),
        (2, "chunks_exceed_tokens"),
        (3, "server_vs_tokenizer"),
        (5, "not_expected_length"),
        (6, "no_server_count"),
    ]
    assert flags.set_index("flag").loc["multi_token_chunks", "severity"] == "info"
    assert 8 in set(flag_token_counts(records, include_warmup=True).request_index)


def test_flag_summary_counts_requests_per_point_and_flag():
    flags = flag_token_counts([record(i, server=16, chunks=4) for i in range(3)])
    assert summarize_token_flags(flags).to_dict("records") == [
        {"point_id": "p", "flag": "multi_token_chunks", "severity": "info", "requests": 3}
    ]
    assert summarize_token_flags(flag_token_counts([])).empty
