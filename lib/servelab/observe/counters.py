"""The engines' own counters, read from their Prometheus `/metrics`, to check the client against the server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from servelab.clock import now_ns
from servelab.serve.engines import all_adapters

_NAMES = [names for adapter in all_adapters().values() if (names := adapter.counter_names) is not None]
"""Each engine's counter names, from its adapter; an endpoint reads those of the engine it names."""

GENERATED_TOKEN_COUNTERS = tuple(names.generated_tokens for names in _NAMES)
REQUESTS_IN_ENGINE = tuple((names.running, names.waiting) for names in _NAMES)
"""(running, waiting) gauges: the requests an engine holds at this moment."""
ENGINE_TTFT = tuple(names.ttft for names in _NAMES if names.ttft is not None)
"""(seconds, count) pairs of the engines' own time to first token."""
ENGINE_TPOT = tuple(names.tpot for names in _NAMES if names.tpot is not None)
"""(seconds, count) pairs of the engines' own time per output token. With fixed-length outputs (ignore_eos) a mean per
request and a mean per token are the same figure."""


def read_counters(base_url: str, metrics_path: str = "/metrics", timeout_s: float = 10.0) -> dict[str, float]:
    """Every sample of the endpoint, summed over labels, keyed by sample name."""
    response = httpx.get(base_url + metrics_path, timeout=timeout_s)
    response.raise_for_status()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def _sample(counters: Mapping[str, float], name: str) -> float | None:
    """A sample by name; a counter's sample may carry the `_total` suffix its family name drops."""
    for key in (name + "_total", name):
        if key in counters:
            return counters[key]
    return None


def generated_tokens(counters: Mapping[str, float]) -> float | None:
    """The engine's own count of output tokens generated so far, whichever engine it is."""
    for name in GENERATED_TOKEN_COUNTERS:
        found = _sample(counters, name)
        if found is not None:
            return found
    return None


def requests_in_engine(counters: Mapping[str, float]) -> float | None:
    """Requests the engine holds now, running or waiting, whichever engine it is."""
    for running, waiting in REQUESTS_IN_ENGINE:
        found = _sample(counters, running)
        if found is not None:
            return found + (_sample(counters, waiting) or 0.0)
    return None


@dataclass(frozen=True)
class CounterSnapshot:
    t_ns: int
    generated_tokens: float | None
    counters: Mapping[str, float] = field(default_factory=dict, repr=False, compare=False)
    """Every sample of the endpoint at that moment, for the engine's own latency means."""


def snapshot(base_url: str, metrics_path: str = "/metrics") -> CounterSnapshot:
    counters = read_counters(base_url, metrics_path)
    return CounterSnapshot(t_ns=now_ns(), generated_tokens=generated_tokens(counters), counters=counters)


def engine_mean_ms(before: CounterSnapshot, after: CounterSnapshot, sources: tuple[tuple[str, str], ...]) -> float | None:
    """The engine's own mean of a latency over the requests between two snapshots: Δseconds / Δcount, in ms, from
    the first (seconds, count) pair the engine exposes; None where it exposes none or nothing happened."""
    for seconds_name, count_name in sources:
        values = [_sample(snap.counters, name) for snap in (before, after) for name in (seconds_name, count_name)]
        if any(value is None for value in values):
            continue
        seconds_before, count_before, seconds_after, count_after = values
        count = count_after - count_before  # type: ignore[operator]
        return 1000.0 * (seconds_after - seconds_before) / count if count > 0 else None  # type: ignore[operator]
    return None


def engine_ttft_ms(before: CounterSnapshot, after: CounterSnapshot) -> float | None:
    return engine_mean_ms(before, after, ENGINE_TTFT)


def engine_tpot_ms(before: CounterSnapshot, after: CounterSnapshot) -> float | None:
    return engine_mean_ms(before, after, ENGINE_TPOT)


def server_output_tok_s(before: CounterSnapshot, after: CounterSnapshot) -> float | None:
    """The engine's generation throughput between two snapshots, tokens/s by its own count."""
    if before.generated_tokens is None or after.generated_tokens is None or after.t_ns <= before.t_ns:
        return None
    return (after.generated_tokens - before.generated_tokens) / ((after.t_ns - before.t_ns) / 1e9)
