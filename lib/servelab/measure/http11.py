"""A lean HTTP/1.1 client for streamed POSTs: a pool of keep-alive connections, each an asyncio Protocol.

Why not httpx here: a streamed response through httpx costs about 30 us of client CPU per chunk (h11, anyio
and a coroutine wake-up for every read), and its pool scans every connection for every request. That caps
one core at a few thousand chunks/s, below what one GPU engine streams. Here the response body is decoded
in `data_received` itself and handed, with the read's arrival stamp, straight to a callback: no task switch
per chunk, and the stamp is taken the moment the event loop delivers the bytes. httpx stays for everything
that is not a measured stream (health checks, tokenizers, engine probes).

Supported: http and https, Content-Length, chunked and read-until-close bodies, keep-alive, `100 Continue`.
Not supported (never needed for a measured stream): pipelining, upgrades, compression (we send
`Accept-Encoding: identity`), redirects, proxies.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from servelab.clock import now_ns

MAX_HEAD_BYTES = 64 * 1024
MAX_CONTROL_LINE_BYTES = 4096

BodyCallback = Callable[[bytes, int], None]
"""Called with each network read's body bytes and its arrival stamp (`now_ns`); may raise to abort."""


class HttpError(Exception):
    """Base of the transport's errors."""


class ConnectFailed(HttpError):
    """The TCP (or TLS) connection could not be opened."""


class ClosedBeforeResponse(HttpError):
    """The connection closed before any byte of the response: the server never answered, safe to resend."""


class ConnectionLost(HttpError):
    """The connection closed or was reset after part of the response arrived."""


class ProtocolViolation(HttpError):
    """The server's bytes are not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Url:
    origin: Origin
    target: str
    """Path and query, as sent on the request line."""
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(Origin(parts.scheme, parts.hostname, port), target, parts.netloc)


@dataclass(slots=True)
class Response:
    status: int
    end_ns: int
    """Arrival stamp of the read that completed the response."""
    error_body: bytes = b""
    """The first bytes of a non-200 body (a 200 body went to the callback)."""


DRAIN_SLICE_NS = 100_000
"""How long the parser runs before the loop looks at the sockets again (see `_Inbox.drain`)."""


class _Inbox:
    """Reads are stamped the moment they arrive and parsed after the loop's current round of I/O callbacks.

    When many streams' bytes are ready in one round, the loop delivers them one after another. Parsing each
    read as it is delivered (tens of microseconds: de-chunking, SSE, JSON) would delay the stamp of the
    twentieth read by the parsing of the nineteen before it; stamping costs well under a microsecond. So
    `data_received` only stamps and queues, and `drain` parses the round in arrival order. Closing events go
    through the same queue, so a connection's bytes are always parsed before its end.
    """

    __slots__ = ("loop", "items", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[_Connection, bytes | _Lost, int]] = deque()
        self.scheduled = False

    def put(self, connection: _Connection, data: bytes | _Lost, t: int) -> None:
        self.items.append((connection, data, t))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.drain)

    def drain(self) -> None:
        """Parse queued reads for at most DRAIN_SLICE_NS, then yield to the loop if any are left: the loop polls
        the sockets before it calls us again, so reads that arrive meanwhile are stamped without waiting for a
        long burst to be parsed."""
        items = self.items
        deadline = now_ns() + DRAIN_SLICE_NS
        while items:
            connection, data, t = items.popleft()
            if data.__class__ is bytes:
                connection.process(data, t)  # type: ignore[arg-type]
            else:
                connection.lost(data.error, t)  # type: ignore[union-attr]
            if items and now_ns() > deadline:
                self.loop.call_soon(self.drain)
                return
        self.scheduled = False


@dataclass(frozen=True, slots=True)
class _Lost:
    error: Exception | None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    __slots__ = (
        "inbox", "transport", "closed", "reusable", "waiter", "on_body", "on_head", "error_limit", "status", "received_any",
        "_head", "_mode", "_left", "_line", "_crlf", "_error_body", "_keep_alive",
    )  # fmt: skip

    def __init__(self, inbox: _Inbox) -> None:
        self.inbox = inbox
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.waiter: asyncio.Future[Response] | None = None
        self.on_body: BodyCallback | None = None
        self.on_head: Callable[[int], None] | None = None
        self.error_limit = 0
        self.status = 0
        self.received_any = False
        self._head = b""
        self._mode = ""
        """'head', 'length', 'chunked', 'close' (read until EOF) or '' (no response expected)."""
        self._left = 0
        self._line = b""
        self._crlf = 0
        self._error_body: list[bytes] = []
        self._keep_alive = True

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # The head and body go out in one write, but a delayed ACK must never hold a request back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self.inbox.put(self, _Lost(exc), now_ns())

    def data_received(self, data: bytes) -> None:
        self.inbox.put(self, data, now_ns())

    def lost(self, exc: Exception | None, t: int) -> None:
        """The connection's end, after every byte it delivered was processed."""
        if self.waiter is None or self.waiter.done():
            return
        if self._mode == "close" and exc is None:
            self._finish(t)
        elif not self.received_any:
            self._fail(ClosedBeforeResponse("the server closed the connection before answering"))
        else:
            reason = f": {exc}" if exc else ""
            self._fail(ConnectionLost(f"the connection closed before the response was complete{reason}"))

    def process(self, data: bytes, t: int) -> None:
        """One network read, stamped `t` on arrival."""
        self.received_any = True
        if self.waiter is None or self.waiter.done():
            # Bytes nobody asked for (no pipelining here): the connection cannot be trusted any more.
            self.abort()
            return
        try:
            mode = self._mode
            if mode == "head":
                data = self._parse_head(data)
                mode = self._mode
                if not data and mode != "done":
                    return
            if mode == "chunked":
                self._chunked(data, t)
            elif mode == "length":
                take = data[: self._left]
                self._left -= len(take)
                if take:
                    self._body(take, t)
                if self._left == 0:
                    self._finish(t)
            elif mode == "close":
                self._body(data, t)
            elif mode == "done":
                self._finish(t)
        except Exception as error:  # a callback or the parser gave up: this connection is finished
            self._fail(error)
            self.abort()

    # ------------------------------------------------------------------ requests
    def start(
        self, request: bytes, on_body: BodyCallback, on_head: Callable[[int], None] | None, error_limit: int
    ) -> asyncio.Future[Response]:
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.on_body = on_body
        self.on_head = on_head
        self.error_limit = error_limit
        self.status = 0
        self.received_any = False
        self.reusable = False
        self._head = b""
        self._mode = "head"
        self._error_body = []
        self.transport.write(request)  # type: ignore[union-attr]
        return self.waiter

    def abort(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ parsing
    def _parse_head(self, data: bytes) -> bytes:
        buffer = self._head + data if self._head else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ProtocolViolation("response head larger than 64 KiB")
                self._head = buffer
                return b""
            lines = buffer[:end].decode("latin-1").split("\r\n")
            rest = buffer[end + 4 :]
            status_line = lines[0].split(" ", 2)
            if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
                raise ProtocolViolation(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
            try:
                status = int(status_line[1])
            except ValueError:
                raise ProtocolViolation(f"bad status code in {lines[0][:100]!r}") from None
            if 100 <= status < 200:  # 100 Continue and friends: a final response follows
                buffer = rest
                continue
            break
        self._head = b""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.status = status
        if self.on_head is not None:
            self.on_head(status)
        connection = headers.get("connection", "").lower()
        self._keep_alive = "close" not in connection and (
            status_line[0] != "HTTP/1.0" or "keep-alive" in connection
        )
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode, self._left, self._line, self._crlf = "chunked", 0, b"", 0
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise ProtocolViolation(f"bad content-length {headers['content-length']!r}") from None
            self._mode = "length" if self._left else "done"
        elif status in (204, 304):
            self._mode = "done"
        else:
            self._mode = "close"
            self._keep_alive = False
        return rest

    def _chunked(self, data: bytes, t: int) -> None:
        """Decode chunked transfer encoding in place; one body callback per network read."""
        pos, size = 0, len(data)
        pieces: list[bytes] = []
        while pos < size:
            if not (self._left or self._crlf or self._line):
                # The common case, a whole chunk from here (size line, data, CRLF): slice it out in one step.
                newline = data.find(b"\r\n", pos)
                if newline > pos:
                    try:
                        chunk = int(data[pos:newline], 16)
                    except ValueError:
                        chunk = 0  # a chunk extension, or junk: the general path below decides
                    start = newline + 2
                    end = start + chunk
                    if chunk > 0 and data[end : end + 2] == b"\r\n":
                        pieces.append(data[start:end])
                        pos = end + 2
                        continue
            if self._left > 0:
                end = pos + self._left
                if end <= size:
                    pieces.append(data[pos:end])
                    self._left = 0
                    self._crlf = 2
                    pos = end
                else:
                    pieces.append(data[pos:])
                    self._left = end - size
                    pos = size
            elif self._crlf:
                if data[pos] != (13 if self._crlf == 2 else 10):
                    raise ProtocolViolation("chunk data not followed by CRLF")
                self._crlf -= 1
                pos += 1
            else:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._line += data[pos:]
                    if len(self._line) > MAX_CONTROL_LINE_BYTES:
                        raise ProtocolViolation("chunk size line too long")
                    break
                line = (self._line + data[pos:newline]) if self._line else data[pos:newline]
                self._line = b""
                pos = newline + 1
                if self._left < 0:  # after the last chunk: trailers until an empty line
                    if not line.strip():
                        if pieces:
                            self._body(b"".join(pieces), t)
                            pieces = []
                        if pos < size:
                            raise ProtocolViolation("bytes after the end of the response")
                        self._finish(t)
                        return
                    continue
                try:
                    chunk = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolViolation(f"bad chunk size line {line[:100]!r}") from None
                self._left = chunk if chunk else -1
        if pieces:
            self._body(pieces[0] if len(pieces) == 1 else b"".join(pieces), t)

    def _body(self, data: bytes, t: int) -> None:
        if self.status == 200:
            self.on_body(data, t)  # type: ignore[misc]
        elif sum(map(len, self._error_body)) < self.error_limit:
            self._error_body.append(data)

    def _finish(self, t: int) -> None:
        self._mode = ""
        self.reusable = self._keep_alive and not self.closed
        waiter, self.waiter = self.waiter, None
        self.on_body = None
        if waiter is not None and not waiter.done():
            error_body = b"".join(self._error_body)[: self.error_limit]
            waiter.set_result(Response(self.status, t, error_body))

    def _fail(self, error: BaseException) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        self.on_body = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class StreamClient:
    """A pool of up to `max_connections` keep-alive HTTP/1.1 connections for streamed POSTs.

    Use it as an async context manager (like `httpx.AsyncClient`); leaving closes every connection. A request
    waits for a free connection when all are busy, newest idle connection first.
    """

    def __init__(self, max_connections: int, *, connect_timeout_s: float = 30.0) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._inbox: _Inbox | None = None

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.abort()
        self._idle.clear()

    async def post(
        self,
        url: Url,
        request: bytes,
        on_body: BodyCallback,
        *,
        on_head: Callable[[int], None] | None = None,
        error_limit: int = 2000,
    ) -> Response:
        """Send `request` (a whole HTTP/1.1 request, see `request_bytes`) and stream a 200 body to `on_body`;
        `on_head` gets the status as soon as the response head arrives.

        Returns when the response is complete. Raises ConnectFailed, ClosedBeforeResponse (nothing arrived;
        safe to resend), ConnectionLost, ProtocolViolation, or whatever `on_body` raised.
        """
        connection = await self._acquire(url.origin)
        ok = False
        try:
            response = await connection.start(request, on_body, on_head, error_limit)
            ok = True
            return response
        finally:
            self._release(url.origin, connection, ok)

    async def _acquire(self, origin: Origin) -> _Connection:
        if self._closed:
            raise HttpError("the client is closed")
        connection = self._take_idle(origin)
        if connection is not None:
            return connection
        while self._open >= self.max_connections:
            if self._evict_idle():
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on the slot we were given
                else:
                    self._waiters.remove(waiter)
                raise
            connection = self._take_idle(origin)
            if connection is not None:
                return connection
        self._open += 1
        try:
            return await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _take_idle(self, origin: Origin) -> _Connection | None:
        """The newest idle connection to `origin` that is still open; closed ones met on the way are let go."""
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
            self._open -= 1
        return None

    def _evict_idle(self) -> bool:
        """Close an idle connection to another origin, making room for a new one."""
        for connections in self._idle.values():
            if connections:
                connections.pop(0).abort()
                self._open -= 1
                return True
        return False

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        if self._inbox is None or self._inbox.loop is not loop:
            self._inbox = _Inbox(loop)
        inbox = self._inbox
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(inbox), origin.host, origin.port, ssl=context
                )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: {error}") from None
        return connection

    def _release(self, origin: Origin, connection: _Connection, ok: bool) -> None:
        if ok and connection.reusable and not self._closed:
            self._idle.setdefault(origin, []).append(connection)
        else:
            if not connection.closed:
                connection.abort()
            self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def request_bytes(url: Url, headers: dict[str, str], body: bytes) -> bytes:
    """One POST request, head and body, ready for a single write."""
    lines = [f"POST {url.target} HTTP/1.1", f"Host: {url.host_header}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
