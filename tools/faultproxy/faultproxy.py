"""A fault-injecting HTTP proxy for reliability tests: it stands in front of a real OpenAI-compatible engine
(llama-server) and breaks chosen responses the way engines and networks break them.

    python tools/faultproxy/faultproxy.py --upstream http://127.0.0.1:8080 --fault malformed --every 2
    # listening on http://127.0.0.1:41237      <- always the first stdout line

Faults use the syntax of the reference emitter's `x-emitter-fault` header (tools/emitter/README.md):
- `status=CODE`: answer at once with that status and an OpenAI-style error body;
- `malformed`: the first streamed event (SSE) or line (NDJSON) is cut off mid-JSON;
- `reset-after=N`: after N streamed events, close the connection with a TCP RST;
- `stall-after=N`: after N streamed events send nothing more and hold the connection open;
- `none`: pass every response through.
`--every K` faults requests K, 2K, 3K, ... (1, the default: every request), so a run sees a known mix.

`--flavour ollama` serves Ollama's `/api/generate` and `/api/chat` as NDJSON, translated from the engine's
`/v1/completions` and `/v1/chat/completions` streams: Ollama-flavoured faults then break a real engine's
tokens. `GET /faultproxy/stats` answers `{"requests": n, "faulted": m}`, counting generation requests only:
others (/tokenize, /detokenize, /health, /metrics) pass through untouched. It listens on loopback.
It is a test tool: one process, no TLS, no pipelining.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import httpx

STATUS_TEXT = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
OLLAMA_PATHS = {"/api/generate": "/v1/completions", "/api/chat": "/v1/chat/completions"}
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/completion", *OLLAMA_PATHS)
"""Requests the proxy counts and faults; any other request (/tokenize, /health, /metrics) passes through as is."""


@dataclass(frozen=True)
class Fault:
    """What to do to a faulted response: kind 'none', 'status', 'malformed', 'reset' or 'stall'."""

    kind: str = "none"
    status: int = 500
    after: int = 0

    @classmethod
    def parse(cls, text: str) -> Fault:
        """'none', 'status=503', 'malformed', 'reset-after=3' or 'stall-after=2'."""
        name, _, value = text.partition("=")
        if name == "none" and not value:
            return cls()
        if name == "malformed" and not value:
            return cls("malformed")
        if name == "status" and value.isdigit() and 400 <= int(value) <= 599:
            return cls("status", status=int(value))
        if name in ("reset-after", "stall-after") and value.isdigit():
            return cls(name.removesuffix("-after"), after=int(value))
        raise ValueError(f"fault {text!r} is not none, status=4xx|5xx, malformed, reset-after=N or stall-after=N")


class _Reset(Exception):
    """The fault asks for the connection to be reset now."""


class FaultProxy:
    """Forwards requests to `upstream`, faulting every `every`-th POST with `fault`."""

    def __init__(self, upstream: str, fault: Fault, every: int = 1, flavour: str = "openai") -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.upstream = upstream.rstrip("/")
        self.fault = fault
        self.every = every
        self.flavour = flavour
        self.requests = 0
        self.faulted = 0
        # A fresh upstream connection per request: llama-server may close an idle keep-alive connection just as
        # it is reused, and the proxy must fault exactly the requests it counts, never lose one to that race.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None), trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: keep-alive requests, one after another."""
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except _Reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        if method == "GET" and path == "/faultproxy/stats":
            await _answer(writer, 200, json.dumps({"requests": self.requests, "faulted": self.faulted}).encode())
            return True
        if method != "POST" or path not in GENERATION_PATHS:
            upstream = await self._client.request(method, self.upstream + path, content=body or None,
                                                  headers={"content-type": headers.get("content-type", "application/json")})
            await _answer(writer, upstream.status_code, upstream.content, upstream.headers.get("content-type", "text/plain"))
            return True
        self.requests += 1
        fault = self.fault if self.requests % self.every == 0 else Fault()
        if fault.kind != "none":
            self.faulted += 1
        if fault.kind == "status":
            error = {"error": {"message": "fault injected by servelab.faultproxy", "type": "fault", "code": fault.status}}
            await _answer(writer, fault.status, json.dumps(error).encode())
            return True
        return await self._stream(reader, writer, path, json.loads(body or b"{}"), fault)

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: dict[str, Any], fault: Fault
    ) -> bool:
        ollama = self.flavour == "ollama"
        upstream_path, upstream_body = (OLLAMA_PATHS.get(path, path), _openai_body(body)) if ollama else (path, body)
        translate = _OllamaLines(body.get("model", ""), chat=path == "/api/chat") if ollama else None
        async with self._client.stream("POST", self.upstream + upstream_path, json=upstream_body) as upstream:
            if upstream.status_code != 200:
                await _answer(writer, upstream.status_code, await upstream.aread())
                return True
            kind = "application/x-ndjson" if ollama else "text/event-stream"
            writer.write(_head(200, kind, chunked=True))
            events = 0
            async for line in upstream.aiter_lines():
                out = translate.line(line) if translate is not None else [line]
                for text in out:
                    is_event = translate is not None or text.startswith("data:")
                    if is_event and fault.kind in ("reset", "stall") and events >= fault.after:
                        if fault.kind == "reset":
                            raise _Reset
                        await reader.read()  # nothing more is sent; wait for the client to give up
                        return False
                    if is_event and fault.kind == "malformed" and events == 0:
                        text = text[: max(1, len(text) // 2)]
                    events += is_event
                    data = (text + "\n").encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return True

    async def aclose(self) -> None:
        await self._client.aclose()


def _openai_body(body: dict[str, Any]) -> dict[str, Any]:
    """An Ollama /api/generate or /api/chat body as the engine's OpenAI-style streaming body."""
    options = body.get("options") or {}
    translated: dict[str, Any] = {
        "model": body.get("model", ""),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": options.get("num_predict", 128),
        "temperature": options.get("temperature", 0),
    }
    if "messages" in body:
        translated["messages"] = body["messages"]
    else:
        translated["prompt"] = body.get("prompt", "")
    return translated


class _OllamaLines:
    """Turns the engine's SSE lines into Ollama's NDJSON lines: one per token, and a last one with the counts."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.started_ns = time.monotonic_ns()
        self.done_reason = "stop"
        self.counts: dict[str, int] = {}

    def _line(self, text: str, done: bool) -> str:
        item: dict[str, Any] = {"model": self.model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if self.chat:
            item["message"] = {"role": "assistant", "content": text}
        else:
            item["response"] = text
        item["done"] = done
        return json.dumps(item)

    def line(self, line: str) -> list[str]:
        if not line.startswith("data:"):
            return []
        payload = line[5:].strip()
        if payload == "[DONE]":
            last = json.loads(self._line("", True))
            last.update(done_reason=self.done_reason, total_duration=time.monotonic_ns() - self.started_ns, **self.counts)
            return [json.dumps(last)]
        event = json.loads(payload)
        usage = event.get("usage") or {}
        if usage:
            self.counts.update(prompt_eval_count=usage.get("prompt_tokens", 0), eval_count=usage.get("completion_tokens", 0))
        timings = event.get("timings") or {}
        if "predicted_ms" in timings:  # llama-server's own decode time, as Ollama's eval_duration (ns)
            self.counts["eval_duration"] = int(timings["predicted_ms"] * 1e6)
            self.counts["prompt_eval_duration"] = int(timings.get("prompt_ms", 0) * 1e6)
        out = []
        for choice in event.get("choices") or []:
            text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if text:
                out.append(self._line(text, False))
            if choice.get("finish_reason"):
                self.done_reason = choice["finish_reason"]
        return out


def _head(status: int, content_type: str, *, chunked: bool = False, length: int = 0) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    reason = STATUS_TEXT.get(status, "OK" if status == 200 else "Error")
    retry = "Retry-After: 1\r\n" if status in (429, 503) else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{framing}\r\n{retry}"
        "Connection: keep-alive\r\n\r\n"
    ).encode()


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "application/json") -> None:
    writer.write(_head(status, content_type, length=len(body)) + body)
    await writer.drain()


async def _main(args: argparse.Namespace) -> None:
    proxy = FaultProxy(args.upstream, Fault.parse(args.fault), args.every, args.flavour)
    server = await asyncio.start_server(proxy.serve, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://{args.host}:{port}", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        await proxy.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tools/faultproxy/faultproxy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the engine's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--fault", default="none", help="none, status=CODE, malformed, reset-after=N, stall-after=N")
    parser.add_argument("--every", type=int, default=1, help="fault requests every, 2*every, ... (1: all)")
    parser.add_argument("--flavour", choices=("openai", "ollama"), default="openai", help="the API served to clients")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        Fault.parse(args.fault)
    except ValueError as error:
        parser.error(str(error))
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
