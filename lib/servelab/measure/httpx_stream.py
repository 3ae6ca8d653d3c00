"""The measured stream over httpx instead of `servelab.measure.http11`: the same `post` contract, the same errors.

servelab measures through `servelab.measure.http11` by default because it costs a third of httpx's client CPU per
streamed chunk (docs/calibration.md). This transport keeps the httpx path one argument away
(`make_client(n, transport="httpx")`), so the two can be measured side by side on the same emitter
(`benchmarks/client_ceiling.py --tools servelab servelab-httpx`) and a doubt about http11 can be settled by
running a sweep over httpx.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx

from servelab.clock import now_ns
from servelab.measure.http11 import (
    BodyCallback,
    ClosedBeforeResponse,
    ConnectFailed,
    ConnectionLost,
    ProtocolViolation,
    Response,
    Url,
)

_SET_BY_HTTPX = frozenset({"host", "content-length"})


class HttpxStreamClient:
    """A pooled `httpx.AsyncClient` behind `servelab.measure.http11.StreamClient`'s interface."""

    def __init__(self, max_connections: int, *, connect_timeout_s: float = 30.0) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=60.0
        )
        # TCP_NODELAY: the request's head and body are separate writes; Nagle would hold the body back.
        transport = httpx.AsyncHTTPTransport(
            limits=limits, retries=0, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        # No read timeout here: each request has one overall deadline in servelab.measure.clients. trust_env=False: a
        # proxy from the environment would sit inside every latency we measure.
        self._client = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(None, connect=connect_timeout_s), trust_env=False
        )

    async def __aenter__(self) -> HttpxStreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(
        self,
        url: Url,
        request: bytes,
        on_body: BodyCallback,
        *,
        on_head: Callable[[int], None] | None = None,
        error_limit: int = 2000,
    ) -> Response:
        """As `StreamClient.post`: `request` is a whole HTTP/1.1 request (`http11.request_bytes`)."""
        head, _, body = request.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(": ")
            if name.lower() not in _SET_BY_HTTPX:
                headers[name] = value
        address = f"{url.origin.scheme}://{url.host_header}{url.target}"
        answered = False
        try:
            async with self._client.stream("POST", address, content=body, headers=headers) as response:
                answered = True
                if on_head is not None:
                    on_head(response.status_code)
                if response.status_code != 200:
                    error_body = await response.aread()
                    return Response(response.status_code, now_ns(), error_body[:error_limit])
                async for data in response.aiter_bytes():
                    on_body(data, now_ns())
                return Response(200, now_ns())
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise ConnectFailed(str(error)) from None
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as error:
            text = str(error).lower()
            if not answered:
                raise ClosedBeforeResponse(str(error)) from None
            if isinstance(error, httpx.RemoteProtocolError) and not any(
                word in text for word in ("closed", "disconnected", "incomplete")
            ):
                raise ProtocolViolation(str(error)) from None
            raise ConnectionLost(str(error)) from None
