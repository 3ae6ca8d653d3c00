"""One module per serving framework; `adapter_for` picks one by the params' `engine.kind`."""

from servelab.serve.engines.base import ENGINES, EngineAdapter, adapter_for, register

__all__ = ["ENGINES", "EngineAdapter", "adapter_for", "register"]
