"""Request records made by hand, for the unit tests of what is computed from them (metrics, interop, agreement)."""

from __future__ import annotations

from servelab.records import RequestRecord

MS = 1_000_000


def make_record(
    index: int = 0,
    *,
    point: str = "dep/en/concurrency-2",
    framework: str = "vllm",
    model: str = "smollm2",
    intended_ms: float = 0,
    sent_ms: float = 1,
    chunks_ms: tuple[float, ...] = (11, 14, 18, 25),
    end_ms: float = 26,
    tokens: int | None = 5,
    prompt: int | None = 7,
    warmup: bool = False,
    error: str | None = None,
) -> RequestRecord:
    """One request, its times in ms from 0: sent at `sent_ms` (0: never sent), a chunk at each of `chunks_ms`, ended
    at `end_ms`. Deployment and language come from a point id `deployment/language/load`, else 'dep' and 'en'."""
    deployment, language = point.split("/")[:2] if "/" in point else ("dep", "en")
    chunk_ns = [round(c * MS) for c in chunks_ms]
    return RequestRecord(
        point_id=point,
        request_index=index,
        deployment=deployment,
        framework=framework,
        model=model,
        language=language,
        warmup=warmup,
        intended_send_ns=round(intended_ms * MS),
        actual_send_ns=round(sent_ms * MS),
        first_token_ns=chunk_ns[0] if chunk_ns else None,
        end_ns=round(end_ms * MS),
        chunk_ns=chunk_ns,
        chunk_count=len(chunk_ns),
        prompt_tokens=prompt,
        output_tokens=tokens,
        token_source="server" if tokens is not None else "none",
        error_class=error,
        error_message="server closed the stream" if error else None,
    )
