"""One module per serving framework; `adapter_for` picks one by the params' `engine.kind`."""

from servelab.serve.engines.base import (
    ENGINES,
    CounterNames,
    EngineAdapter,
    adapter_for,
    adapter_for_kind,
    all_adapters,
    engine_packages,
    known_kinds,
    register,
    start_order,
)

__all__ = [
    "ENGINES", "CounterNames", "EngineAdapter", "adapter_for", "adapter_for_kind", "all_adapters", "engine_packages", "known_kinds",
    "register", "start_order",
]
