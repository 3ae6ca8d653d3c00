"""The reference emitter, started as a real subprocess and spoken to over HTTP with httpx."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

EMITTER = Path(__file__).resolve().parents[2] / "tools" / "emitter" / "emitter.py"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


@contextmanager
def running_emitter(*flags: str) -> Iterator[str]:
    """Start emitter.py on a free port; yield its base URL; stop it with SIGTERM and expect exit 0."""
    process = subprocess.Popen(
        [sys.executable, str(EMITTER), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()  # type: ignore[union-attr]
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, (
            f"first stdout line was {line!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        )  # type: ignore[union-attr]
        yield match.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_emitter("--ttft-ms", "20", "--itl-ms", "5") as base_url:
        yield base_url


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as http:
        yield http


def completion_request(path: str, max_tokens: int, stream: bool = True, **extra: object) -> dict:
    request: dict = {"model": "m", "max_tokens": max_tokens, "stream": stream, **extra}
    if path == CHAT:
        request["messages"] = [{"role": "user", "content": "one two three"}]
    else:
        request["prompt"] = "one two three four"
    return request


def stream_events(
    client: httpx.Client, path: str, request: dict, headers: dict | None = None
) -> tuple[list[str], list[int], int]:
    """POST a streaming request; return the SSE data payloads, their arrival times (ns) and the send time."""
    payloads, arrivals = [], []
    sent_ns = time.monotonic_ns()
    with client.stream("POST", path, json=request, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic_ns())
                payloads.append(line[len("data: ") :])
            else:
                assert line == "", f"unexpected SSE line {line!r}"
    return payloads, arrivals, sent_ns


def token_texts(payloads: list[str]) -> list[str]:
    """The token text of each token event (completions text or chat delta content, empty role delta left out)."""
    texts = []
    for payload in payloads:
        if payload == "[DONE]":
            continue
        for choice in json.loads(payload)["choices"]:
            text = choice["text"] if "text" in choice else choice["delta"].get("content", "")
            if text:
                texts.append(text)
    return texts


def token_arrivals(payloads: list[str], arrivals: list[int]) -> list[int]:
    return [
        at
        for payload, at in zip(payloads, arrivals, strict=True)
        if payload != "[DONE]" and token_texts([payload])
    ]


def stats(client: httpx.Client) -> dict:
    response = client.get("/emitter/stats")
    assert response.status_code == 200
    return response.json()


# --- SSE shapes ------------------------------------------------------------------------------------------


def test_completions_stream_events_have_the_openai_shape(client: httpx.Client) -> None:
    payloads, _, _ = stream_events(client, COMPLETIONS, completion_request(COMPLETIONS, 4))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert len(chunks) == 4
    assert len({chunk["id"] for chunk in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    for chunk in chunks:
        assert chunk["object"] == "text_completion"
        assert chunk["model"] == "m"
        assert isinstance(chunk["created"], int)
        (choice,) = chunk["choices"]
        assert choice["index"] == 0 and choice["text"] == " tok" and choice["logprobs"] is None
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, None, "length"]


def test_chat_stream_opens_with_the_assistant_role_then_streams_delta_content(client: httpx.Client) -> None:
    payloads, _, _ = stream_events(client, CHAT, completion_request(CHAT, 3))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [chunk["choices"][0]["delta"] for chunk in chunks[1:]] == [{"content": " tok"}] * 3
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, None, "length"]


@pytest.mark.parametrize("path, prompt_tokens", [(COMPLETIONS, 4), (CHAT, 3)])
def test_usage_chunk_counts_prompt_words_and_completion_tokens(
    client: httpx.Client, path: str, prompt_tokens: int
) -> None:
    request = completion_request(path, 6, stream_options={"include_usage": True})
    payloads, _, _ = stream_events(client, path, request)
    assert payloads[-1] == "[DONE]"
    usage_chunk = json.loads(payloads[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 6,
        "total_tokens": prompt_tokens + 6,
    }
    assert all(json.loads(payload).get("usage") is None for payload in payloads[:-2])


def test_no_usage_chunk_unless_include_usage_is_asked_for(client: httpx.Client) -> None:
    payloads, _, _ = stream_events(client, CHAT, completion_request(CHAT, 2))
    assert all(json.loads(payload)["choices"] for payload in payloads[:-1])


@pytest.mark.parametrize("max_tokens", [1, 7, 64])
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_stream_carries_exactly_max_tokens_token_chunks(
    client: httpx.Client, path: str, max_tokens: int
) -> None:
    payloads, _, _ = stream_events(client, path, completion_request(path, max_tokens))
    assert token_texts(payloads) == [" tok"] * max_tokens
    assert payloads.count("[DONE]") == 1 and payloads[-1] == "[DONE]"


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_non_streaming_request_gets_the_whole_completion_with_usage(client: httpx.Client, path: str) -> None:
    response = client.post(path, json=completion_request(path, 5, stream=False))
    assert response.status_code == 200
    body = response.json()
    (choice,) = body["choices"]
    text = choice["text"] if path == COMPLETIONS else choice["message"]["content"]
    assert text == " tok" * 5
    assert choice["finish_reason"] == "length"
    assert body["object"] == ("text_completion" if path == COMPLETIONS else "chat.completion")
    assert body["usage"]["completion_tokens"] == 5


def test_health_models_and_unknown_routes(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    models = client.get("/v1/models").json()
    assert [model["id"] for model in models["data"]] == ["servelab-emitter"]
    assert client.get("/v1/nothing").status_code == 404
    assert client.get(COMPLETIONS).status_code == 405


def test_bad_requests_get_400_with_an_openai_error(client: httpx.Client) -> None:
    response = client.post(COMPLETIONS, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not JSON" in response.json()["error"]["message"]
    response = client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 0})
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]
    response = client.post(
        COMPLETIONS, json=completion_request(COMPLETIONS, 2), headers={"x-emitter-ttft-ms": "soon"}
    )
    assert response.status_code == 400 and "x-emitter-ttft-ms" in response.json()["error"]["message"]


def test_one_keep_alive_connection_serves_many_requests() -> None:
    with (
        running_emitter("--ttft-ms", "1", "--itl-ms", "1") as base_url,
        httpx.Client(base_url=base_url) as http,
    ):
        for _ in range(5):
            stream_events(http, COMPLETIONS, completion_request(COMPLETIONS, 3))
            assert (
                http.post(COMPLETIONS, json=completion_request(COMPLETIONS, 2, stream=False)).status_code
                == 200
            )
        report = stats(http)
    assert report["connections"] == 1
    assert report["requests"]["completions"] == 10


# --- timing ----------------------------------------------------------------------------------------------


def test_measured_ttft_and_mean_itl_match_the_configuration() -> None:
    ttft_ms, itl_ms = 50, 10
    with (
        running_emitter("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)) as base_url,
        httpx.Client(base_url=base_url) as http,
    ):
        http.get("/health")
        ttfts, itls = [], []
        for _ in range(3):
            payloads, arrivals, sent_ns = stream_events(
                http, COMPLETIONS, completion_request(COMPLETIONS, 30)
            )
            tokens = token_arrivals(payloads, arrivals)
            ttfts.append((tokens[0] - sent_ns) / 1e6)
            itls.append((tokens[-1] - tokens[0]) / (len(tokens) - 1) / 1e6)
    assert ttft_ms <= statistics.median(ttfts) < ttft_ms + 30, ttfts
    assert statistics.median(itls) == pytest.approx(itl_ms, rel=0.2), itls


def test_schedule_is_absolute_so_a_long_stream_does_not_drift() -> None:
    # 499 gaps of 1 ms: an emitter that waits itl after each write instead of until an absolute deadline
    # adds its wake-up error (0.1 ms or more) to every gap, 10% or more in all.
    with (
        running_emitter("--ttft-ms", "10", "--itl-ms", "1") as base_url,
        httpx.Client(base_url=base_url) as http,
    ):
        payloads, arrivals, _ = stream_events(http, COMPLETIONS, completion_request(COMPLETIONS, 500))
    tokens = token_arrivals(payloads, arrivals)
    assert len(tokens) == 500
    assert (tokens[-1] - tokens[0]) / 1e6 == pytest.approx(499, rel=0.05)


def test_request_headers_override_ttft_and_itl(client: httpx.Client) -> None:
    client.get("/health")
    headers = {"x-emitter-ttft-ms": "150", "x-emitter-itl-ms": "20"}
    payloads, arrivals, sent_ns = stream_events(
        client, COMPLETIONS, completion_request(COMPLETIONS, 10), headers
    )
    tokens = token_arrivals(payloads, arrivals)
    assert 150 <= (tokens[0] - sent_ns) / 1e6 < 250
    assert (tokens[-1] - tokens[0]) / 9 / 1e6 == pytest.approx(20, rel=0.2)


def test_stats_report_lateness_of_every_token_and_reset_clears_it() -> None:
    with (
        running_emitter("--ttft-ms", "5", "--itl-ms", "5") as base_url,
        httpx.Client(base_url=base_url) as http,
    ):
        for _ in range(5):
            stream_events(http, COMPLETIONS, completion_request(COMPLETIONS, 20))
        report = stats(http)
        assert http.post("/emitter/reset").status_code == 200
        after_reset = stats(http)
    lateness = report["lateness_us"]
    assert report["tokens"] == 100 and lateness["count"] == 100
    assert 0 < lateness["p50"] <= lateness["p99"] <= lateness["max"]
    assert lateness["p50"] < 5000
    assert report["streams_active"] == 0
    assert after_reset["tokens"] == 0 and after_reset["lateness_us"]["count"] == 0


def test_metrics_count_tokens_and_requests_in_prometheus_text() -> None:
    def counters(http: httpx.Client) -> dict[str, float]:
        text = http.get("/metrics").text
        return {
            name: float(value) for name, value in re.findall(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)
        }

    with (
        running_emitter("--ttft-ms", "1", "--itl-ms", "1") as base_url,
        httpx.Client(base_url=base_url) as http,
    ):
        before = counters(http)
        stream_events(http, COMPLETIONS, completion_request(COMPLETIONS, 7))
        stream_events(http, CHAT, completion_request(CHAT, 5))
        after = counters(http)
    assert after["emitter_tokens_emitted_total"] - before["emitter_tokens_emitted_total"] == 12
    assert (
        after['emitter_requests_total{endpoint="completions"}']
        == before['emitter_requests_total{endpoint="completions"}'] + 1
    )
    assert (
        after['emitter_requests_total{endpoint="chat"}']
        == before['emitter_requests_total{endpoint="chat"}'] + 1
    )
    assert after["emitter_streams_active"] == 0


def test_record_file_holds_each_token_write_time_on_the_schedule(tmp_path: Path) -> None:
    record = tmp_path / "emitter.jsonl"
    with running_emitter("--ttft-ms", "20", "--itl-ms", "5", "--record", str(record)) as base_url:
        with httpx.Client(base_url=base_url) as http:
            ids = []
            for index in range(3):
                payloads, _, _ = stream_events(
                    http, COMPLETIONS, completion_request(COMPLETIONS, 5), {"x-request-id": f"r{index}"}
                )
                ids.append(json.loads(payloads[0])["id"])
    records = [json.loads(line) for line in record.read_text().splitlines()]
    assert [entry["id"] for entry in records] == ids
    assert [entry["x_request_id"] for entry in records] == ["r0", "r1", "r2"]
    for entry in records:
        assert entry["outcome"] == "done" and len(entry["write_ns"]) == 5
        assert entry["write_ns"] == sorted(entry["write_ns"])
        for k, written_ns in enumerate(entry["write_ns"]):
            scheduled_ns = entry["received_ns"] + entry["ttft_ns"] + k * entry["itl_ns"]
            # Never early; how late depends on the machine's load, so the bound only catches a wrong schedule
            # (a token a whole second off), not a busy host.
            assert 0 <= written_ns - scheduled_ns < 1_000_000_000


def test_max_streams_makes_later_requests_wait_for_a_free_slot(tmp_path: Path) -> None:
    # Four streams at once on two slots: two wait, and each waiting one starts (its TTFT clock too) only when an
    # earlier stream has written its last token.
    record = tmp_path / "emitter.jsonl"

    async def four(base_url: str) -> list[list[str]]:
        async def one(http: httpx.AsyncClient) -> list[str]:
            async with http.stream("POST", COMPLETIONS, json=completion_request(COMPLETIONS, 4)) as response:
                return [line async for line in response.aiter_lines() if line.startswith("data: ")]

        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            return await asyncio.gather(*(one(http) for _ in range(4)))

    with running_emitter("--ttft-ms", "30", "--itl-ms", "5", "--max-streams", "2", "--record", str(record)) as base_url:
        results = asyncio.run(four(base_url))
        with httpx.Client(base_url=base_url) as http:
            report = stats(http)
    assert all(len(lines) == 5 for lines in results)  # 4 tokens and [DONE]
    assert report["streams_active"] == 0
    entries = sorted((json.loads(line) for line in record.read_text().splitlines()), key=lambda e: e["received_ns"])
    first_ends = sorted(entry["write_ns"][-1] for entry in entries[:2])
    assert entries[2]["received_ns"] >= first_ends[0] and entries[3]["received_ns"] >= first_ends[1]
    assert all(entry["write_ns"][0] >= entry["received_ns"] + entry["ttft_ns"] for entry in entries)


# --- fault injection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
def test_fault_header_status_answers_with_that_status_and_an_openai_error(
    client: httpx.Client, status: int
) -> None:
    response = client.post(
        COMPLETIONS, json=completion_request(COMPLETIONS, 3), headers={"x-emitter-fault": f"status={status}"}
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == status


def test_status_flag_alone_faults_every_request() -> None:
    with running_emitter("--status", "503") as base_url, httpx.Client(base_url=base_url) as http:
        codes = {
            http.post(COMPLETIONS, json=completion_request(COMPLETIONS, 2)).status_code for _ in range(10)
        }
        assert (
            http.post(
                COMPLETIONS, json=completion_request(COMPLETIONS, 2), headers={"x-emitter-fault": "none"}
            ).status_code
            == 200
        )
    assert codes == {503}


def test_fail_rate_faults_about_that_fraction_of_requests() -> None:
    flags = ("--fail-rate", "0.3", "--status", "429", "--seed", "7", "--ttft-ms", "0", "--itl-ms", "0")
    with running_emitter(*flags) as base_url, httpx.Client(base_url=base_url) as http:
        codes = [
            http.post(COMPLETIONS, json=completion_request(COMPLETIONS, 1, stream=False)).status_code
            for _ in range(200)
        ]
        faulted = stats(http)["requests"]["faulted"]
    assert set(codes) == {200, 429}
    assert 30 <= codes.count(429) <= 90
    assert faulted == codes.count(429)


def test_malformed_makes_the_first_token_event_invalid_json() -> None:
    with (
        running_emitter("--malformed", "--ttft-ms", "1", "--itl-ms", "1") as base_url,
        httpx.Client(base_url=base_url) as http,
    ):
        payloads, _, _ = stream_events(http, COMPLETIONS, completion_request(COMPLETIONS, 4))
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[0])
    assert token_texts(payloads[1:]) == [" tok"] * 3
    assert payloads[-1] == "[DONE]"


@pytest.mark.parametrize("how", ["flag", "header"])
def test_reset_after_n_closes_the_connection_after_n_token_chunks(how: str) -> None:
    flags = ("--reset-after", "3") if how == "flag" else ()
    headers = {"x-emitter-fault": "reset-after=3"} if how == "header" else None
    with (
        running_emitter("--ttft-ms", "5", "--itl-ms", "5", *flags) as base_url,
        httpx.Client(base_url=base_url) as http,
    ):
        payloads: list[str] = []
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with http.stream(
                "POST", COMPLETIONS, json=completion_request(COMPLETIONS, 10), headers=headers
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        payloads.append(line[len("data: ") :])
    assert token_texts(payloads) == [" tok"] * 3
    assert "[DONE]" not in payloads


def test_stall_after_n_stops_sending_but_keeps_the_socket_open(client: httpx.Client) -> None:
    payloads: list[str] = []
    timeout = httpx.Timeout(10, read=0.5)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        with client.stream(
            "POST",
            COMPLETIONS,
            json=completion_request(COMPLETIONS, 10),
            headers={"x-emitter-fault": "stall-after=2"},
            timeout=timeout,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payloads.append(line[len("data: ") :])
    assert time.monotonic() - started >= 0.5
    assert token_texts(payloads) == [" tok"] * 2


def test_client_hanging_up_mid_stream_ends_the_stream_and_counts_a_disconnect() -> None:
    with running_emitter("--ttft-ms", "5", "--itl-ms", "5") as base_url:
        with httpx.Client(base_url=base_url) as http:
            with http.stream("POST", COMPLETIONS, json=completion_request(COMPLETIONS, 1000)) as response:
                lines = response.iter_lines()
                while not next(lines).startswith("data: "):
                    pass
        time.sleep(0.1)
        with httpx.Client(base_url=base_url) as http:
            report = stats(http)
    assert report["disconnects"] == 1
    assert report["streams_active"] == 0
    assert 0 < report["tokens"] < 1000


def test_bad_flag_exits_2_with_a_message_naming_it() -> None:
    result = subprocess.run(
        [sys.executable, str(EMITTER), "--port", "0", "--status", "200"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--status 200" in result.stderr


# --- fan-out ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_five_hundred_concurrent_streams_all_complete() -> None:
    streams, max_tokens = 500, 10

    async def one(http: httpx.AsyncClient) -> list[str]:
        payloads = []
        async with http.stream(
            "POST", COMPLETIONS, json=completion_request(COMPLETIONS, max_tokens)
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    payloads.append(line[len("data: ") :])
        return payloads

    async def all_streams(base_url: str) -> list[list[str]]:
        limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:
            return await asyncio.gather(*(one(http) for _ in range(streams)))

    with running_emitter("--ttft-ms", "20", "--itl-ms", "10") as base_url:
        results = asyncio.run(all_streams(base_url))
        with httpx.Client(base_url=base_url) as http:
            report = stats(http)
    assert len(results) == streams
    assert all(
        token_texts(payloads) == [" tok"] * max_tokens and payloads[-1] == "[DONE]" for payloads in results
    )
    assert report["tokens"] == streams * max_tokens
    assert report["streams_active"] == 0


@pytest.mark.slow
def test_workers_share_the_port_and_their_stats() -> None:
    with running_emitter("--workers", "2", "--ttft-ms", "1", "--itl-ms", "1") as base_url:
        for _ in range(40):
            # A fresh connection each time, so SO_REUSEPORT spreads them over both workers.
            with httpx.Client(base_url=base_url) as http:
                stream_events(http, COMPLETIONS, completion_request(COMPLETIONS, 3))
        time.sleep(0.3)  # workers publish their stats every 100 ms
        with httpx.Client(base_url=base_url) as http:
            report = stats(http)
    assert report["workers"] == 2
    assert report["requests"]["completions"] == 40 and report["tokens"] == 120
    assert all(worker["tokens"] > 0 for worker in report["per_worker"])
