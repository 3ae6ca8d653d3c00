"""The engines' own counters, read from their Prometheus `/metrics`, to check the client against the server."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from servelab.clock import now_ns

GENERATED_TOKEN_COUNTERS = (
    "vllm:generation_tokens",  # vLLM v1 (the parser drops the _total suffix of counters)
    "sglang:generation_tokens",
    "llamacpp:tokens_predicted",
)


def read_counters(base_url: str, metrics_path: str = "/metrics", timeout_s: float = 10.0) -> dict[str, float]:
    """Every sample of the endpoint, summed over labels, keyed by sample name."""
    response = httpx.get(base_url + metrics_path, timeout=timeout_s)
    response.raise_for_status()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def generated_tokens(counters: dict[str, float]) -> float | None:
    """The engine's own count of output tokens generated so far, whichever engine it is."""
    for name in GENERATED_TOKEN_COUNTERS:
        for key in (name + "_total", name):
            if key in counters:
                return counters[key]
    return None


@dataclass(frozen=True)
class CounterSnapshot:
    t_ns: int
    generated_tokens: float | None


def snapshot(base_url: str, metrics_path: str = "/metrics") -> CounterSnapshot:
    return CounterSnapshot(t_ns=now_ns(), generated_tokens=generated_tokens(read_counters(base_url, metrics_path)))


def server_output_tok_s(before: CounterSnapshot, after: CounterSnapshot) -> float | None:
    """The engine's generation throughput between two snapshots, tokens/s by its own count."""
    if before.generated_tokens is None or after.generated_tokens is None or after.t_ns <= before.t_ns:
        return None
    return (after.generated_tokens - before.generated_tokens) / ((after.t_ns - before.t_ns) / 1e9)
