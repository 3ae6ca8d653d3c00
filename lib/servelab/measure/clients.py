"""Streaming clients: one request in, one filled `RequestRecord` out, never an exception for a failed request.

Two API flavours share one code path:
- 'openai': `/v1/completions` and `/v1/chat/completions`, server-sent events (`data: {...}` ... `data: [DONE]`);
  usage is asked for with `stream_options.include_usage`.
- 'ollama': `/api/generate` and `/api/chat`, one JSON object per line; the last has `done: true`,
  `eval_count`, `prompt_eval_count` and the server's durations (ns).

Every stamp is `servelab.clock.now_ns()`. A network read is stamped once, when it arrives, and every event
it carried gets that stamp: two events in one read reached us together, and the record says so.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from servelab.clock import now_ns
from servelab.measure.http11 import (
    ClosedBeforeResponse,
    ConnectFailed,
    ConnectionLost,
    HttpError,
    ProtocolViolation,
    StreamClient,
    Url,
    request_bytes,
)
from servelab.records import RequestRecord
from servelab.serve.deploy import api_key_headers

if TYPE_CHECKING:
    from servelab.measure.prompts import Prompt
    from servelab.serve.deploy import RunningServer

Api = Literal["completions", "chat"]
ApiFlavour = Literal["openai", "ollama"]

PATHS: dict[tuple[str, str], str] = {
    ("openai", "completions"): "/v1/completions",
    ("openai", "chat"): "/v1/chat/completions",
    ("ollama", "completions"): "/api/generate",
    ("ollama", "chat"): "/api/chat",
}
ERROR_BODY_CHARS = 2000
_TIMEOUTS = (TimeoutError, asyncio.exceptions.TimeoutError)  # one class from Python 3.11, two before


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go and what the records call it."""

    deployment: str
    framework: str
    model: str
    """What we report (the params' model)."""
    served_model: str
    """What requests carry in their `model` field."""
    base_url: str
    api_flavour: ApiFlavour
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Sent with every request: an endpoint's bearer token (never written to a record)."""

    @classmethod
    def for_server(cls, server: RunningServer) -> Target:
        """The target of a running server: its deployment, the model we report, and the name its engine serves."""
        if server.api_flavour not in ("openai", "ollama"):
            raise ValueError(f"{server.name} ({server.framework}) has unknown api_flavour {server.api_flavour!r}")
        return cls(
            deployment=server.name,
            framework=server.framework,
            model=server.model,
            served_model=server.served_model,
            base_url=server.base_url.rstrip("/"),
            api_flavour=server.api_flavour,  # type: ignore[arg-type]
            headers=tuple(api_key_headers(server.api_key_env).items()),
        )


class TokenCounter(Protocol):
    """Anything that counts tokens of a text asynchronously (see `servelab.measure.tokens`)."""

    async def count_async(self, text: str) -> int: ...


Transport = Literal["http11", "httpx"]


def make_client(max_connections: int, *, timeout_s: float = 120.0, transport: Transport = "http11") -> StreamClient:
    """One pool of keep-alive HTTP/1.1 connections for a whole run; size `max_connections` to the highest
    concurrency. `timeout_s` bounds opening a connection; each request has its own overall deadline.

    `transport`: 'http11' (servelab.measure.http11, the default: a third of httpx's CPU per streamed chunk) or 'httpx'
    (servelab.measure.httpx_stream), with the same contract, for side-by-side checks."""
    if transport == "httpx":
        from servelab.measure.httpx_stream import HttpxStreamClient

        return HttpxStreamClient(max_connections, connect_timeout_s=timeout_s)  # type: ignore[return-value]
    if transport != "http11":
        raise ValueError(f"transport must be 'http11' or 'httpx', got {transport!r}")
    return StreamClient(max_connections, connect_timeout_s=timeout_s)


def request_body(
    target: Target,
    prompt_text: str,
    *,
    api: Api,
    output_tokens: int,
    ignore_eos: bool,
    messages: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The JSON body of one streaming request; greedy decoding so runs repeat. Chat sends `messages` ((role,
    content) turns) where given, else one user turn of `prompt_text`."""
    chat = [{"role": role, "content": content} for role, content in messages] or [
        {"role": "user", "content": prompt_text}
    ]
    if target.api_flavour == "ollama":
        body: dict[str, Any] = {
            "model": target.served_model,
            "stream": True,
            # Ollama has no ignore_eos: num_predict is a ceiling, so outputs may be shorter.
            "options": {"num_predict": output_tokens, "temperature": 0},
        }
        if api == "chat":
            body["messages"] = chat
        else:
            body["prompt"] = prompt_text
        return body
    body = {
        "model": target.served_model,
        "max_tokens": output_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    if api == "chat":
        body["messages"] = chat
    else:
        body["prompt"] = prompt_text
    return body


class _StreamError(Exception):
    """The server said something we cannot use; carries the record's error class."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


def _class_of_status(status: int) -> str:
    if status == 429:
        return "http_429"
    if 400 <= status < 500:
        return "http_4xx"
    if status >= 500:
        return "http_5xx"
    return "protocol"


def _class_of_code(code: Any) -> str | None:
    """An error code as an error class: an HTTP status, or FastChat's five digits (50001 is a 500)."""
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    if 10_000 <= code < 60_000:
        code //= 100
    return _class_of_status(code) if 400 <= code < 600 else None


def _error_of_event(error: Any) -> _StreamError:
    """An error object sent inside a 200 stream (vLLM, llama.cpp, Ollama all do this)."""
    if isinstance(error, dict):
        code = error.get("code", error.get("error_code"))
        message = str(error.get("message") or error.get("text") or error)
        error_class = _class_of_code(code)
        if error_class is not None:
            return _StreamError(error_class, f"in-stream error {code}: {message}")
        return _StreamError("protocol", f"in-stream error: {message}")
    return _StreamError("protocol", f"in-stream error: {error}")


def _error_in(event: dict[str, Any]) -> _StreamError | None:
    """The error an event carries, however the server spells it, else None:
    - an `error` key (OpenAI, vLLM, llama.cpp, Ollama);
    - a non-zero `error_code` (FastChat: `{"text": "...NETWORK ERROR...", "error_code": 50001}`, then [DONE]);
    - a top-level `{"object": "error", "message": ..., "code": ...}` (vLLM's and FastChat's ErrorResponse)."""
    if "error" in event:
        return _error_of_event(event["error"])
    if event.get("error_code") not in (None, 0, "0", ""):
        return _error_of_event(event)
    if event.get("object") == "error":
        return _error_of_event(event)
    return None


class _Stream:
    """Accumulates one response's events into its record."""

    def __init__(self, record: RequestRecord, keep_text: bool) -> None:
        self.record = record
        self.pieces: list[str] | None = [] if keep_text else None
        self.server_output_tokens: int | None = None
        self.finished = False
        self._tail = b""

    def content(self, text: str, t: int) -> None:
        record = self.record
        if not record.chunk_ns:
            record.first_token_ns = t
        record.chunk_ns.append(t)
        record.chunk_count += 1
        record.output_chars += len(text)
        if self.pieces is not None:
            self.pieces.append(text)

    def feed(self, data: bytes, t: int) -> None:
        """Split arrived bytes into lines: one split per network read, the unfinished line kept for the next."""
        lines = (self._tail + data if self._tail else data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self.line(line, t)

    def close(self, t: int) -> None:
        if self._tail:
            self.line(self._tail, t)
            self._tail = b""

    def line(self, line: bytes, t: int) -> None:
        raise NotImplementedError

    def check_complete(self) -> None:
        raise NotImplementedError


_decode_json = json.JSONDecoder().decode
"""json.loads less its bytes-encoding detection: the slow path of every event."""


def _lf_line_ends(buffer: bytes) -> tuple[bytes, bytes]:
    """CRLF and bare CR line ends (both legal in SSE) as LF, and a CR that ends `buffer`, held back: its LF may
    come in the next read, and CR LF is one line end, not two."""
    held = b"\r" if buffer[-1:] == b"\r" else b""
    if held:
        buffer = buffer[:-1]
    return buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), held


class _SseStream(_Stream):
    """OpenAI-style server-sent events; `data:` lines of one event are joined, a blank line ends it."""

    def __init__(self, record: RequestRecord, keep_text: bool) -> None:
        super().__init__(record, keep_text)
        self._data: list[bytes] = []
        self._event_name: bytes | None = None
        self.done = False

    def feed(self, data: bytes, t: int) -> None:
        # The hot loop of a run, inlined: one split per network read, then a prefix test per line.
        buffer = self._tail + data if self._tail else data
        held = b""
        if b"\r" in buffer:
            buffer, held = _lf_line_ends(buffer)
        lines = buffer.split(b"\n")
        self._tail = lines.pop() + held
        pending = self._data
        for line in lines:
            if line[:5] == b"data:":
                pending.append(line[5:])
            elif not line:
                if pending:
                    payload = pending[0] if len(pending) == 1 else b"\n".join(pending)
                    pending.clear()
                    self.event(payload, t)
                elif self._event_name == b"error":  # an error event without data is still an error
                    self.event(b"", t)
                self._event_name = None
            elif line[:6] == b"event:":
                self._event_name = line[6:].strip()
            # Comments (':'), 'id:' and 'retry:' carry nothing we measure.

    def close(self, t: int) -> None:
        self.feed(b"\n\n", t)

    def event(self, payload: bytes, t: int) -> None:
        if self._event_name == b"error":
            raise self._error_event(payload)
        if payload.strip() == b"[DONE]":
            self.done = True
            return
        try:
            event = _decode_json(payload.decode("utf-8"))
        except ValueError:
            raise _StreamError("protocol", f"event is not JSON: {payload[:200]!r}") from None
        if not isinstance(event, dict):
            raise _StreamError("protocol", f"event is not a JSON object: {payload[:200]!r}")
        error = _error_in(event)
        if error is not None:
            raise error
        if "choices" not in event and not event.get("usage") and not event.get("timings"):
            raise _StreamError("protocol", f"event has no choices, usage or timings: {payload[:200]!r}")
        choices = event.get("choices")
        if choices:
            choice = choices[0]
            text = choice.get("text")
            if text is None:
                delta = choice.get("delta") or {}
                text = delta.get("content")
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    text = reasoning + (text or "")
            if text:
                self.content(text, t)
            if choice.get("finish_reason"):
                self.finished = True
        usage = event.get("usage")
        if usage:
            completion = usage.get("completion_tokens")
            if isinstance(completion, int):
                self.server_output_tokens = completion
            prompt_tokens = usage.get("prompt_tokens")
            if isinstance(prompt_tokens, int):
                self.record.prompt_tokens = prompt_tokens
        timings = event.get("timings")
        if isinstance(timings, dict):
            self.record.server_timings = timings

    @staticmethod
    def _error_event(payload: bytes) -> _StreamError:
        """An SSE `event: error`: its data is the error, JSON or plain text."""
        text = payload.decode("utf-8", errors="replace").strip()
        try:
            event = _decode_json(text)
        except ValueError:
            return _StreamError("protocol", f"in-stream error event: {text[:500] or '(no data)'}")
        if isinstance(event, dict):
            return _error_in(event) or _error_of_event(event)
        return _StreamError("protocol", f"in-stream error event: {text[:500]}")

    def check_complete(self) -> None:
        if not (self.done or self.finished or self.server_output_tokens is not None):
            raise _StreamError("protocol", "the stream ended before [DONE], a finish_reason or usage")


OLLAMA_TIMING_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "done_reason",
)


class _NdjsonStream(_Stream):
    """Ollama: one JSON object per line; the last has `done: true` and the counts."""

    def line(self, line: bytes, t: int) -> None:
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            raise _StreamError("protocol", f"line is not JSON: {line[:200]!r}") from None
        if not isinstance(event, dict):
            raise _StreamError("protocol", f"line is not a JSON object: {line[:200]!r}")
        error = _error_in(event)
        if error is not None:
            raise error
        message = event.get("message")
        if isinstance(message, dict):
            text = (message.get("thinking") or "") + (message.get("content") or "")
        else:
            text = (event.get("thinking") or "") + (event.get("response") or "")
        if text:
            self.content(text, t)
        if event.get("done"):
            self.finished = True
            eval_count = event.get("eval_count")
            if isinstance(eval_count, int):
                self.server_output_tokens = eval_count
            prompt_eval_count = event.get("prompt_eval_count")
            if isinstance(prompt_eval_count, int):
                self.record.prompt_tokens = prompt_eval_count
            self.record.server_timings = {k: event[k] for k in OLLAMA_TIMING_FIELDS if k in event}

    def check_complete(self) -> None:
        if not self.finished:
            raise _StreamError("protocol", "the stream ended before an object with done: true")


def _fail(record: RequestRecord, error_class: str, message: str) -> None:
    record.error_class = error_class
    record.error_message = message[:ERROR_BODY_CHARS]
    if not record.end_ns:
        record.end_ns = now_ns()


def _class_of_transport_error(error: HttpError) -> str:
    if isinstance(error, ConnectFailed):
        return "connect"
    if isinstance(error, ConnectionLost | ClosedBeforeResponse):
        return "connection_reset"
    if isinstance(error, ProtocolViolation):
        return "protocol"
    return "other"


async def _exchange(client: StreamClient, url: Url, request: bytes, stream: _Stream) -> None:
    record = stream.record

    def on_head(status: int) -> None:
        record.http_status = status

    record.actual_send_ns = now_ns()
    response = await client.post(url, request, stream.feed, on_head=on_head, error_limit=ERROR_BODY_CHARS)
    record.end_ns = response.end_ns
    if response.status != 200:
        text = response.error_body.decode("utf-8", errors="replace")
        raise _StreamError(_class_of_status(response.status), f"HTTP {response.status}: {text}")
    stream.close(record.end_ns)
    stream.check_complete()


MAX_RETRIES = 2


async def _within(coroutine: Coroutine[Any, Any, None], timeout_s: float) -> None:
    """Run `coroutine` under one overall deadline, connecting and waiting for a free connection included."""
    if hasattr(asyncio, "timeout"):  # Python 3.11+: no extra task per request
        async with asyncio.timeout(timeout_s):
            await coroutine
    else:
        await asyncio.wait_for(coroutine, timeout_s)


async def _attempts(client: StreamClient, url: Url, request: bytes, stream: _Stream) -> None:
    """Send, and send again while the connection closed before any response byte.

    Servers may close a keep-alive connection after a streamed response without `Connection: close`
    (llama-server does, after every stream); a request written in the moment before their FIN arrives
    meets a closed socket. No byte came back, so the server never answered it: it is sent again on a fresh
    connection, `actual_send_ns` restamped, and the record's `retries` counts it.
    """
    record = stream.record
    while True:
        try:
            await _exchange(client, url, request, stream)
            return
        except ClosedBeforeResponse:
            if record.retries >= MAX_RETRIES:
                raise
            record.retries += 1


HEADERS = {
    "openai": {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "identity",
    },
    "ollama": {
        "Content-Type": "application/json",
        "Accept": "application/x-ndjson",
        "Accept-Encoding": "identity",
    },
}


@functools.lru_cache(maxsize=256)
def _url(base_url: str, path: str) -> Url:
    return Url.parse(base_url + path)


async def send(
    client: StreamClient,
    target: Target,
    prompt: Prompt,
    *,
    api: Api,
    output_tokens: int,
    ignore_eos: bool,
    timeout_s: float,
    record: RequestRecord,
    token_counter: TokenCounter | None = None,
) -> RequestRecord:
    """Stream one request and fill `record` (times in ns on the one clock); a failure is recorded, not raised.

    Output tokens come from the server (usage / eval_count); without one, from `token_counter` if given,
    else the number of content chunks (`token_source` says which). Cancellation is recorded as
    'cancelled' and then re-raised, as asyncio requires.
    """
    url = _url(target.base_url, PATHS[(target.api_flavour, api)])
    body = request_body(
        target, prompt.text, api=api, output_tokens=prompt.output_tokens or output_tokens, ignore_eos=ignore_eos,
        messages=prompt.messages,
    )
    content = json.dumps(body, ensure_ascii=False).encode("utf-8")
    headers = {**HEADERS[target.api_flavour], **dict(target.headers)} if target.headers else HEADERS[target.api_flavour]
    request = request_bytes(url, headers, content)
    record.prompt_chars = len(prompt.text)
    keep_text = token_counter is not None
    stream: _Stream = (
        _SseStream(record, keep_text) if target.api_flavour == "openai" else _NdjsonStream(record, keep_text)
    )
    try:
        await _within(_attempts(client, url, request, stream), timeout_s)
    except _StreamError as error:
        _fail(record, error.error_class, str(error))
    except _TIMEOUTS:
        _fail(record, "timeout", f"no complete response within {timeout_s:g} s")
    except HttpError as error:
        _fail(record, _class_of_transport_error(error), f"{type(error).__name__}: {error}")
    except asyncio.CancelledError:
        _fail(record, "cancelled", "the request was cancelled before it completed")
        raise
    except Exception as error:  # a request must never raise; the record keeps what happened
        _fail(record, "other", f"{type(error).__name__}: {error}")
    if record.ok and record.chunk_count == 0:
        _fail(record, "empty", "the response carried no output text")
    await _settle_tokens(record, stream, token_counter)
    return record


async def _settle_tokens(record: RequestRecord, stream: _Stream, token_counter: TokenCounter | None) -> None:
    if token_counter is not None and stream.pieces is not None and record.chunk_count:
        try:
            record.tokenizer_output_tokens = await token_counter.count_async("".join(stream.pieces))
        except Exception:  # a tokenizer failure leaves the count unknown; the request did not fail
            record.tokenizer_output_tokens = None
    if stream.server_output_tokens is not None:
        record.output_tokens = stream.server_output_tokens
        record.token_source = "server"
    elif record.tokenizer_output_tokens is not None:
        record.output_tokens = record.tokenizer_output_tokens
        record.token_source = "tokenizer"
    elif record.chunk_count:
        record.output_tokens = record.chunk_count
        record.token_source = "chunks"
