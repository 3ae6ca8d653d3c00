"""Errors that a server sends inside a 200 stream, however it spells them, and SSE with bare CR line ends.

Every stream here comes from the reference emitter, a real process on loopback (`--error-event KIND` and
`--line-ends cr` are its flags for these shapes); each is read by both transports, servelab's http11 and httpx.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fault_harness import check_nothing_lost, emitter, fleet_at, sweep_params
from servelab.measure.clients import Target, make_client, send
from servelab.measure.prompts import Prompt
from servelab.measure.sweep import run_sweep
from servelab.records import RequestRecord, latest_points, read_requests

pytestmark = pytest.mark.slow

TRANSPORTS = ["http11", "httpx"]


def _send_all(url: str, transport: str, count: int = 3, api: str = "completions") -> list[RequestRecord]:
    """`count` requests of 6 output tokens, one after another, through one client of `transport`."""
    target = Target("fake", "vllm", "emitter", "emitter", url, "openai")

    async def go() -> list[RequestRecord]:
        records = []
        async with make_client(2, transport=transport) as client:  # type: ignore[arg-type]
            for index in range(count):
                record = RequestRecord("p", index, "fake", "vllm", "emitter", "en", False, 0)
                await send(client, target, Prompt("hello there", "en", 2), api=api, output_tokens=6,  # type: ignore[arg-type]
                           ignore_eos=True, timeout_s=10, record=record)
                records.append(record)
        return records

    return asyncio.run(go())


ERROR_EVENTS = [
    pytest.param("error-code", "http_5xx", "50001", id="fastchat-error_code"),
    pytest.param("object-error", "http_5xx", "injected fault: object-error", id="object-error"),
    pytest.param("event-error", "protocol", "injected fault: event-error", id="sse-event-error"),
    pytest.param("error-key", "http_5xx", "injected fault: error-key", id="error-key"),
    pytest.param("no-choices", "protocol", "no choices", id="chunk-without-choices"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("kind", "error_class", "said"), ERROR_EVENTS)
def test_an_error_inside_a_200_stream_is_an_error_with_its_class_and_message_whatever_its_shape(kind, error_class, said, transport):
    """Expectation: the emitter sends one token, then an error event of the given shape, then [DONE], as
    FastChat and vLLM's ErrorResponse do. Every request is recorded failed (never ok, whatever tokens came
    before), with its error class and the server's message; the HTTP status stays the 200 that was sent."""
    with emitter("--error-event", kind) as (url, _):
        records = _send_all(url, transport)
    assert [r.error_class for r in records] == [error_class] * 3
    assert all(said in (r.error_message or "") for r in records), records[0].error_message
    assert {r.http_status for r in records} == {200}


@pytest.mark.parametrize("line_ends", ["cr", "crlf"])
@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sse_with_bare_cr_or_crlf_line_ends_parses_like_lf(transport, api, line_ends):
    """Expectation: the SSE specification allows CR, LF and CRLF as line ends; with the emitter writing bare CRs
    (or CRLFs) every request completes with its 6 tokens, counted by the server's usage, and the event split
    across reads (a CR at the end of one read, its LF in the next) does not end an event early."""
    with emitter("--line-ends", line_ends) as (url, _):
        records = _send_all(url, transport, api=api)
    assert [r.error_class for r in records] == [None] * 3, records[0].error_message
    assert [(r.output_tokens, r.token_source, r.chunk_count) for r in records] == [(6, "server", 6)] * 3


def test_a_fastchat_error_code_in_a_sweep_fails_the_point_and_feeds_no_latency(tmp_path):
    """Expectation: in a real sweep against the emitter sending FastChat's error_code on every request, every
    measured record carries http_5xx, the point is marked failed (its error rate passes max_error_rate), and
    nothing is lost: the emitter received exactly the requests on disk."""
    params = sweep_params(requests_per_point=5, output_tokens=6)
    with emitter("--error-event", "error-code") as (url, process):
        run_sweep(params, tmp_path, fleet_at(tmp_path, url, process.pid), progress=False)
        received = httpx.get(url + "/emitter/stats").json()["requests"]["completions"]
    records = read_requests(tmp_path)
    assert {r.error_class for r in records} == {"http_5xx"}
    (point,) = latest_points(tmp_path).values()
    assert (point.status, point.errors) == ("failed", 5)
    assert check_nothing_lost(tmp_path, warmup_requests=1) == received == 6


def test_a_crlf_split_between_two_reads_is_one_line_end_not_two():
    """Expectation: an event of two data lines whose CR ends one network read and whose LF starts the next is
    parsed as one event (its two lines joined into valid JSON), not dispatched after its first line; a
    stand-in for a network that splits there, fed to the SSE parser read by read."""
    from servelab.measure.clients import _SseStream

    record = RequestRecord("p", 0, "fake", "vllm", "emitter", "en", False, 0)
    stream = _SseStream(record, keep_text=False)
    for read in (b'data: {"choices":\r', b'\ndata: [{"text":"a","finish_reason":"length"}]}\r', b"\n\r", b"\n"):
        stream.feed(read, 1)
    stream.close(2)
    stream.check_complete()
    assert (record.chunk_count, record.output_chars, stream.finished) == (1, 1, True)


def test_an_event_with_a_name_but_no_data_is_not_an_error_unless_it_is_named_error():
    """Expectation: `event: ping` and a blank line (no data: nothing to dispatch, per the SSE specification) is
    ignored, while `event: error` without data is still an error; a stand-in stream fed to the SSE parser."""
    from servelab.measure.clients import _SseStream, _StreamError

    record = RequestRecord("p", 0, "fake", "vllm", "emitter", "en", False, 0)
    stream = _SseStream(record, keep_text=False)
    stream.feed(b'event: ping\n\ndata: {"choices":[{"text":"a","finish_reason":"length"}]}\n\n', 1)
    stream.check_complete()
    with pytest.raises(_StreamError, match="in-stream error event"):
        _SseStream(record, keep_text=False).feed(b"event: error\n\n", 1)
