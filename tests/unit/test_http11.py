"""The lean HTTP/1.1 client of measured streams, against a raw asyncio server that writes scripted bytes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from servelab.measure.http11 import (
    ClosedBeforeResponse,
    ConnectionLost,
    ProtocolViolation,
    StreamClient,
    Url,
    request_bytes,
)

Script = Callable[[asyncio.StreamWriter, int], Awaitable[None]]
"""Writes the response to the n-th request of a connection (n from 0)."""


async def _serve(script: Script) -> tuple[asyncio.Server, list[int], list[bytes]]:
    connections: list[int] = []
    bodies: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                bodies.append(await reader.readexactly(length))
                await script(writer, served)
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections, bodies


def _url(server: asyncio.Server) -> Url:
    port = server.sockets[0].getsockname()[1]
    return Url.parse(f"http://127.0.0.1:{port}/v1/completions")


async def _post(client: StreamClient, url: Url, body: bytes = b"{}", **kwargs) -> tuple[object, list[bytes]]:
    pieces: list[bytes] = []
    response = await client.post(
        url,
        request_bytes(url, {"Content-Type": "application/json"}, body),
        lambda d, t: pieces.append(d),
        **kwargs,
    )
    return response, pieces


def _run(script: Script, go: Callable[[StreamClient, Url], Awaitable[object]], connections: int = 4):
    async def main():
        server, opened, bodies = await _serve(script)
        async with server, StreamClient(connections) as client:
            return await go(client, _url(server)), opened, bodies

    return asyncio.run(main())


OK_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_request_is_one_post_with_host_and_content_length():
    url = Url.parse("http://example.org:8080/base/v1/completions?x=1")
    request = request_bytes(url, {"Accept": "text/event-stream"}, b'{"a":1}')
    assert request == (
        b"POST /base/v1/completions?x=1 HTTP/1.1\r\nHost: example.org:8080\r\nAccept: text/event-stream\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
    )
    with pytest.raises(ValueError, match="not an http"):
        Url.parse("ftp://example.org/")


def test_chunk_extensions_and_trailers_are_read_and_the_connection_is_kept():
    async def script(writer, n):
        writer.write(OK_CHUNKED + b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")

    async def go(client, url):
        return [await _post(client, url) for _ in range(3)]

    results, opened, bodies = _run(script, go)
    assert [b"".join(pieces) for _, pieces in results] == [b"hello world"] * 3
    assert [response.status for response, _ in results] == [200] * 3
    assert len(opened) == 1 and bodies == [b"{}"] * 3


def test_a_body_dribbled_one_byte_at_a_time_arrives_whole_with_a_stamp_per_read():
    body = b'data: {"choices":[{"text":"x"}]}\n\n'
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"

    async def script(writer, n):
        for byte in OK_CHUNKED + chunked:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.0005)

    async def go(client, url):
        stamps: list[int] = []
        pieces: list[bytes] = []

        def on_body(data: bytes, t: int) -> None:
            pieces.append(data)
            stamps.append(t)

        response = await client.post(url, request_bytes(url, {}, b"{}"), on_body)
        return response, pieces, stamps

    (response, pieces, stamps), _, _ = _run(script, go)
    assert b"".join(pieces) == body
    assert len(pieces) > 1 and stamps == sorted(stamps)
    assert response.end_ns >= stamps[-1]


def test_content_length_and_read_until_close_bodies():
    async def script(writer, n):
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
            await writer.drain()
            writer.close()

    async def go(client, url):
        return [await _post(client, url) for _ in range(2)]

    results, opened, _ = _run(script, go)
    assert [b"".join(pieces) for _, pieces in results] == [b"hello", b"until the end"]
    assert len(opened) == 1


def test_a_connection_closed_by_the_server_is_not_reused():
    async def script(writer, n):
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def go(client, url):
        return [await _post(client, url) for _ in range(3)]

    results, opened, _ = _run(script, go)
    assert [b"".join(pieces) for _, pieces in results] == [b"ok"] * 3
    assert len(opened) == 3


def test_continue_is_skipped_and_an_error_body_is_kept_apart_and_cut():
    async def script(writer, n):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\n0123456789")

    async def go(client, url):
        return await _post(client, url, error_limit=4)

    (response, pieces), _, _ = _run(script, go)
    assert (response.status, response.error_body, pieces) == (503, b"0123", [])


def test_a_full_pool_makes_the_next_request_wait_for_a_free_connection():
    async def script(writer, n):
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(n).encode())

    async def go(client, url):
        return await asyncio.gather(*[_post(client, url) for _ in range(4)])

    results, opened, _ = _run(script, go, connections=1)
    assert sorted(b"".join(pieces) for _, pieces in results) == [b"0", b"1", b"2", b"3"]
    assert len(opened) == 1


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", ProtocolViolation),
        (OK_CHUNKED + b"zz\r\nhello\r\n", ProtocolViolation),
        (OK_CHUNKED + b"5\r\nhelloXX", ProtocolViolation),
        (OK_CHUNKED + b"5\r\nhel", ConnectionLost),
        (b"", ClosedBeforeResponse),
    ],
    ids=["status-line", "chunk-size", "chunk-end", "cut-short", "no-answer"],
)
def test_broken_responses_raise_the_transport_error_that_names_them(response, error):
    async def script(writer, n):
        writer.write(response)
        await writer.drain()
        writer.close()

    with pytest.raises(error):
        _run(script, lambda client, url: _post(client, url))


def test_a_callback_that_raises_fails_the_request_and_drops_the_connection():
    async def script(writer, n):
        writer.write(OK_CHUNKED + b"5\r\nhello\r\n0\r\n\r\n")

    class Stop(Exception):
        pass

    async def go(client, url):
        def on_body(data: bytes, t: int) -> None:
            raise Stop

        with pytest.raises(Stop):
            await client.post(url, request_bytes(url, {}, b"{}"), on_body)
        return await _post(client, url)

    (response, pieces), opened, _ = _run(script, go)
    assert b"".join(pieces) == b"hello"
    assert len(opened) == 2


class _Recorder:
    """Stands in for a connection: records what the inbox hands it, taking `busy_ns` per read."""

    def __init__(self, log: list, name: str, busy_ns: int = 0) -> None:
        self.log, self.name, self.busy_ns = log, name, busy_ns

    def process(self, data: bytes, t: int) -> None:
        end = time.monotonic_ns() + self.busy_ns
        while time.monotonic_ns() < end:
            pass
        self.log.append((self.name, data, t))

    def lost(self, error: Exception | None, t: int) -> None:
        self.log.append((self.name, "lost", t))


def test_the_inbox_keeps_arrival_order_and_stamps_and_ends_a_connection_after_its_bytes() -> None:
    from servelab.measure.http11 import _Inbox, _Lost

    async def go() -> list:
        log: list = []
        inbox = _Inbox(asyncio.get_running_loop())
        a, b = _Recorder(log, "a"), _Recorder(log, "b")
        inbox.put(a, b"1", 10)
        inbox.put(b, b"x", 11)
        inbox.put(a, _Lost(None), 12)
        inbox.put(b, b"y", 13)
        assert log == []  # nothing is parsed inside the I/O callbacks that queue
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return log

    assert asyncio.run(go()) == [("a", b"1", 10), ("b", b"x", 11), ("a", "lost", 12), ("b", b"y", 13)]


def test_the_inbox_gives_the_loop_back_between_slices_of_parsing() -> None:
    from servelab.measure.http11 import DRAIN_SLICE_NS, _Inbox

    async def go() -> list[int]:
        log: list = []
        inbox = _Inbox(asyncio.get_running_loop())
        slow = _Recorder(log, "slow", busy_ns=2 * DRAIN_SLICE_NS)  # each read outlasts a slice
        for index in range(4):
            inbox.put(slow, b"%d" % index, index)
        done_per_round = []
        while len(log) < 4:
            await asyncio.sleep(0)
            done_per_round.append(len(log))
        return done_per_round

    rounds = asyncio.run(go())
    assert rounds[-1] == 4 and all(later - earlier <= 1 for earlier, later in zip([0, *rounds], rounds, strict=False))
