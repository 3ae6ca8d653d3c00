"""Token accounting: the server's count first, a local tokenizer when the server gives none, and flags where
the server's count, the chunk count and a tokenizer disagree.

Counters have a sync `count` (to build prompts before a run) and an async `count_async` (inside a run).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import httpx
import pandas as pd

from servelab.records import RequestRecord

TOKENIZE_TIMEOUT_S = 30.0


class JsonTokenizer:
    """A Hugging Face `tokenizer.json`, through the `tokenizers` library; counts without special tokens."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no tokenizer.json there; give the model's tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(self.path))
        self.name = f"tokenizer.json:{self.path}"

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def prefix(self, text: str, max_tokens: int) -> tuple[str, int]:
        """The longest prefix of `text` that cuts at a token boundary and counts at most `max_tokens`, and its count.

        One encoding gives each token's character span; a cut can re-encode one token longer (a character split
        over byte-level tokens), so the cut steps back until the count fits.
        """
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= max_tokens:
            return text, len(encoding.ids)
        for kept in range(max_tokens, 0, -1):
            candidate = text[: encoding.offsets[kept - 1][1]]
            counted = self.count(candidate)
            if counted <= max_tokens:
                return candidate, counted
        return "", 0

    async def count_async(self, text: str) -> int:
        return self.count(text)

    def ordinary_ids(self) -> list[int]:
        """Token ids that are not special or added tokens: what random prompts draw from."""
        added = set(self.tokenizer.get_added_tokens_decoder())
        return [i for i in range(self.tokenizer.get_vocab_size(with_added_tokens=False)) if i not in added]


@functools.cache
def local_tokenizer(model_path: str | None) -> JsonTokenizer | None:
    """The tokenizer.json in a model folder (a Hugging Face snapshot or a shape), or beside a model file as
    `<stem>.tokenizer.json` (a shape's GGUF), or None where there is none."""
    if not model_path:
        return None
    model = Path(model_path)
    for path in (model / "tokenizer.json", model.with_name(f"{model.stem}.tokenizer.json")):
        if path.is_file():
            return JsonTokenizer(path)
    return None


class ServerTokenizer:
    """The server's own tokenizer over HTTP: llama.cpp's or vLLM's `POST /tokenize` and `POST /detokenize`;
    counts without special tokens."""

    def __init__(
        self,
        base_url: str,
        *,
        flavour: Literal["llamacpp", "vllm"] = "llamacpp",
        model: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = TOKENIZE_TIMEOUT_S,
    ) -> None:
        self.url = base_url.rstrip("/") + "/tokenize"
        self.flavour = flavour
        self.model = model
        self.timeout_s = timeout_s
        self._async_client = client
        self._sync_client: httpx.Client | None = None
        self.name = f"server:{self.url}"

    def _body(self, text: str) -> dict[str, object]:
        if self.flavour == "llamacpp":
            return {"content": text, "add_special": False}
        body: dict[str, object] = {"prompt": text, "add_special_tokens": False}
        if self.model:
            body["model"] = self.model
        return body

    def _tokens(self, response: httpx.Response) -> list[int]:
        if response.status_code != 200:
            raise RuntimeError(f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}")
        tokens = response.json().get("tokens")
        if not isinstance(tokens, list):
            raise RuntimeError(f"{self.url} answered without a 'tokens' list")
        return tokens

    def _client(self) -> httpx.Client:
        if self._sync_client is None:
            self._sync_client = httpx.Client(timeout=self.timeout_s, trust_env=False)
        return self._sync_client

    def encode(self, text: str) -> list[int]:
        return self._tokens(self._client().post(self.url, json=self._body(text)))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: list[int]) -> str:
        body: dict[str, object] = {"tokens": ids}
        if self.flavour == "vllm" and self.model:
            body["model"] = self.model
        url = self.url.removesuffix("/tokenize") + "/detokenize"
        response = self._client().post(url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered HTTP {response.status_code}: {response.text[:200]}")
        text = response.json().get("content" if self.flavour == "llamacpp" else "prompt")
        if not isinstance(text, str):
            raise RuntimeError(f"{url} answered without the text")
        return text

    def prefix(self, text: str, max_tokens: int) -> tuple[str, int]:
        """The text of the first `max_tokens` tokens of `text` and its count: encode, cut, decode, count again (a
        cut inside a character can decode to text that counts one more; then one token fewer is kept)."""
        ids = self.encode(text)
        if len(ids) <= max_tokens:
            return text, len(ids)
        for kept in range(max_tokens, max(0, max_tokens - 8), -1):
            candidate = self.decode(ids[:kept])
            counted = self.count(candidate)
            if counted <= max_tokens:
                return candidate, counted
        raise RuntimeError(f"{self.url}: no prefix of {max_tokens} tokens round-trips through /detokenize")

    async def count_async(self, text: str) -> int:
        if self._async_client is None:
            self._async_client = httpx.AsyncClient(timeout=self.timeout_s, trust_env=False)
        response = await self._async_client.post(self.url, json=self._body(text), timeout=self.timeout_s)
        return len(self._tokens(response))

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None


def output_tokens(record: RequestRecord) -> int | None:
    """The output token count metrics use: the server's, else the tokenizer's, else the chunk count."""
    if record.output_tokens is not None:
        return record.output_tokens
    if record.tokenizer_output_tokens is not None:
        return record.tokenizer_output_tokens
    return record.chunk_count or None


FLAG_COLUMNS = [
    "point_id",
    "request_index",
    "flag",
    "severity",
    "server_tokens",
    "chunk_count",
    "tokenizer_tokens",
    "expected_tokens",
    "detail",
]
FLAGS = {
    "no_server_count": "warning",
    "server_vs_tokenizer": "warning",
    "chunks_exceed_tokens": "warning",
    "not_expected_length": "warning",
    "multi_token_chunks": "info",
}
"""What each flag means is in docs/metrics.md, section 'Token accounting'."""


def flag_token_counts(
    records: Iterable[RequestRecord],
    *,
    expected_output_tokens: int | None = None,
    relative_tolerance: float = 0.05,
    absolute_tolerance: int = 2,
    include_warmup: bool = False,
) -> pd.DataFrame:
    """One row per (successful request, flag) where the counts disagree; tidy, columns FLAG_COLUMNS.

    - no_server_count: the server gave no usage; output_tokens came from a tokenizer or the chunk count.
    - server_vs_tokenizer: |server - tokenizer| > max(absolute_tolerance, relative_tolerance * server).
    - chunks_exceed_tokens: more content chunks than tokens: every chunk holds at least one token, so the
      server's count is wrong.
    - not_expected_length: the output is not `expected_output_tokens` long (asked with ignore_eos).
    - multi_token_chunks (info): fewer chunks than tokens; some chunks carried several tokens, so ITL is
      not TPOT.
    """
    rows: list[dict[str, object]] = []
    for record in records:
        if not record.ok or (record.warmup and not include_warmup):
            continue
        server = record.output_tokens if record.token_source == "server" else None
        tokenizer = record.tokenizer_output_tokens
        chunks = record.chunk_count

        def add(flag: str, detail: str, record: RequestRecord = record, server: int | None = server) -> None:
            rows.append(
                {
                    "point_id": record.point_id,
                    "request_index": record.request_index,
                    "flag": flag,
                    "severity": FLAGS[flag],
                    "server_tokens": server,
                    "chunk_count": record.chunk_count,
                    "tokenizer_tokens": record.tokenizer_output_tokens,
                    "expected_tokens": expected_output_tokens,
                    "detail": detail,
                }
            )

        if server is None:
            add("no_server_count", f"output_tokens from {record.token_source}")
        elif tokenizer is not None:
            allowed = max(absolute_tolerance, relative_tolerance * server)
            if abs(server - tokenizer) > allowed:
                add("server_vs_tokenizer", f"server {server} vs tokenizer {tokenizer} (allowed ±{allowed:g})")
        counted = server if server is not None else tokenizer
        if counted is not None:
            if chunks > counted:
                add("chunks_exceed_tokens", f"{chunks} chunks but {counted} tokens")
            elif chunks < counted:
                add("multi_token_chunks", f"{chunks} chunks carried {counted} tokens")
        if expected_output_tokens is not None:
            got = output_tokens(record)
            if got != expected_output_tokens:
                add("not_expected_length", f"{got} tokens, asked for {expected_output_tokens}")
    frame = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    return frame.astype({"server_tokens": "Int64", "tokenizer_tokens": "Int64", "expected_tokens": "Int64"})


def summarize_token_flags(flags: pd.DataFrame) -> pd.DataFrame:
    """Flags per point: columns point_id, flag, severity, requests."""
    if flags.empty:
        return pd.DataFrame(columns=["point_id", "flag", "severity", "requests"])
    grouped = flags.groupby(["point_id", "flag", "severity"], sort=True).size()
    return grouped.rename("requests").reset_index()
