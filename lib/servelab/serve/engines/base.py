"""What every engine adapter answers: how to start its server (launch command, compose service), how to talk to
it (health path, version probe, API flavour, tokenize endpoints, /metrics counter names), how much memory it
takes (`footprint`, the planner's rule) and when it starts (`start_order_key`). docs/engines.md shows how to add one.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

from servelab.errors import EngineError, ParamsError
from servelab.params import Deployment


@dataclass(frozen=True)
class LaunchSpec:
    """A server's command line as a list (never a shell string) and the environment it adds."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CounterNames:
    """The Prometheus sample names an engine's /metrics uses for what servelab checks its client against."""

    generated_tokens: str
    running: str
    waiting: str
    ttft: tuple[str, str] | None = None
    """(seconds sum, count) of the engine's own time to first token."""
    tpot: tuple[str, str] | None = None
    """(seconds sum, count) of the engine's own time per output token."""


@dataclass(frozen=True)
class LoadedModel:
    """One model a server holds, by its own report (Ollama's /api/ps): all of it, and the part on the GPU."""

    name: str
    size_mib: float
    vram_mib: float

    @property
    def spilled(self) -> bool:
        """Part of it is in host memory, so the CPU computes that part."""
        return self.vram_mib < self.size_mib


@dataclass(frozen=True)
class ScaledBudget:
    """The planner's suggestion for one engine: its memory flag set so that its budget is `budget_mib`."""

    flag: str
    current: float
    suggested: float
    deployment: Deployment


@dataclass(frozen=True)
class Footprint:
    """What one deployment is predicted to hold, MiB; `memory` says where: 'gpu', 'host', or 'elsewhere' for a
    server servelab did not start (nothing is predicted for it)."""

    deployment: str
    framework: str
    memory: str
    predicted_mib: float
    weights_mib: float | None
    kv_cache_mib: float | None
    kv_tokens: int | None
    overhead_mib: float
    formula: str
    notes: tuple[str, ...] = ()
    seed_fraction: float | None = None
    """The utilization the seed's formula (`planner.seed_formula_mib`) reads, where the engine has one (vLLM)."""


class EngineAdapter(ABC):
    """Knows one engine. Stateless: every method takes the deployment it is about."""

    kind: ClassVar[str]
    display_name: ClassVar[str]
    """The engine's name as its project writes it, for messages ('vLLM', 'llama.cpp')."""
    api_flavour: ClassVar[str] = "openai"
    """'openai' (/v1/completions, /v1/chat/completions, SSE) or 'ollama' (/api/generate, /api/chat, NDJSON)."""
    health_path: ClassVar[str] = "/health"
    metrics_path: ClassVar[str | None] = "/metrics"
    container_port: ClassVar[int] = 8000
    starts_server: ClassVar[bool] = True
    """False for a server that runs already (kind endpoint): servelab neither starts nor stops it."""
    serves_shapes: ClassVar[bool] = False
    """Whether it can serve a shape model: random weights from a config (`--load-format dummy`)."""
    tokenize_flavour: ClassVar[str | None] = None
    """'llamacpp' or 'vllm': the body its POST /tokenize and /detokenize take (servelab.measure.tokens); None: none."""
    counter_names: ClassVar[CounterNames | None] = None
    loaded_models_path: ClassVar[str | None] = None
    """Where the server lists the models it holds and their memory (Ollama's /api/ps); None: it has no such list."""
    packages: ClassVar[tuple[str, ...]] = ()
    """Python packages whose versions the manifest records when they are installed here."""

    # ------------------------------------------------------------------------------------------- starting it
    @abstractmethod
    def launch(self, deployment: Deployment, port: int, model_path: str) -> LaunchSpec:
        """The native command that serves `model_path` on 127.0.0.1:`port`."""

    @abstractmethod
    def compose_service(self, deployment: Deployment, host_port: int) -> dict[str, Any] | None:
        """The docker compose service (without depends_on), GPU reservation, loopback port and healthcheck;
        None for a server compose does not start."""

    def image(self, deployment: Deployment) -> str | None:
        """The compose image, which must be pinned; None where there is none."""
        return getattr(deployment.engine, "image", None)

    def model_path(self, deployment: Deployment) -> str:
        """What the server is told to load; a shape model's folder replaces this (see servelab.serve.models)."""
        return deployment.model

    def check_shape(self, deployment: Deployment) -> None:
        """Raise ParamsError when the deployment asks for a shape model this engine cannot serve."""
        if deployment.shape is not None and not self.serves_shapes:
            able = " and ".join(kind for kind, adapter in sorted(all_adapters().items()) if adapter.serves_shapes)
            raise ParamsError(
                f"deployment {deployment.name!r}: {self.kind} cannot serve shape {deployment.shape!r} (dummy weights); "
                f"shapes work with {able}, so remove `shape` or change engine.kind"
            )

    def shape_model(self, deployment: Deployment, root: Path) -> str:
        """What the server loads for a shape deployment, written once under `root` (a cache shared by runs): the
        HF-style folder of servelab.serve.models (config and tokenizer, no weights) unless the engine needs other."""
        from servelab.serve.models import prepare_shape

        self.check_shape(deployment)
        return str(prepare_shape(deployment, root))

    # ------------------------------------------------------------------------------------------- talking to it
    def served_model_name(self, deployment: Deployment) -> str:
        """The model name requests must carry."""
        return deployment.name

    def health_path_for(self, deployment: Deployment) -> str:
        return self.health_path

    def api_flavour_for(self, deployment: Deployment) -> str:
        return self.api_flavour

    def metrics_path_for(self, deployment: Deployment) -> str | None:
        return self.metrics_path

    def counter_names_for(self, deployment: Deployment) -> CounterNames | None:
        return self.counter_names

    def tokenize_flavour_for(self, deployment: Deployment) -> str | None:
        return self.tokenize_flavour

    def loaded_models_path_for(self, deployment: Deployment) -> str | None:
        return self.loaded_models_path

    def loaded_models(self, body: Any) -> list[LoadedModel]:
        """The models listed in the parsed JSON of `loaded_models_path`; [] for an engine that lists none."""
        return []

    def endpoint_url(self, deployment: Deployment) -> str | None:
        """The URL of a server that runs already (`starts_server` False); None for one servelab starts."""
        return None

    def api_key_env(self, deployment: Deployment) -> str | None:
        """The environment variable whose value is sent as a bearer token; None: no key is sent."""
        return None

    def is_healthy(self, response: httpx.Response) -> bool:
        return response.status_code == 200

    async def version(self, client: httpx.AsyncClient, base_url: str) -> str:
        """The engine's own version string, or 'unknown'."""
        try:
            response = await client.get(base_url + "/version", timeout=5.0)
            if response.status_code == 200:
                return str(response.json().get("version", "unknown"))
        except (httpx.HTTPError, ValueError):
            pass
        return "unknown"

    async def after_ready(self, client: httpx.AsyncClient, base_url: str, deployment: Deployment) -> None:
        """Runs once the health check passes and before any load (Ollama loads its model here); default: nothing."""
        return None

    def version_argv(self, deployment: Deployment) -> list[str] | None:
        """A command that prints the version without starting a server, or None."""
        return None

    def log_hint(self, log_path: Path) -> str:
        return f"see {log_path}"

    # ------------------------------------------------------------------------------------------- its memory
    @abstractmethod
    def footprint(self, deployment: Deployment, total_mib: float, free_at_start_mib: float) -> Footprint:
        """The memory it is predicted to hold on a GPU of `total_mib` with `free_at_start_mib` free when it starts."""

    def memory_fraction(self, deployment: Deployment) -> float | None:
        """The share of the GPU it claims by a flag (vLLM, SGLang), or None when its memory follows its model."""
        return None

    def needs_budget_free_at_start(self) -> bool:
        """Whether it refuses to start unless its whole predicted budget is free (vLLM)."""
        return False

    def scaled_to(self, deployment: Deployment, budget_mib: float, total_mib: float, free_mib: float) -> ScaledBudget | None:
        """Its memory flag set so that its budget (footprint minus overhead) is `budget_mib`; None without a flag."""
        return None

    def start_order_key(self, deployment: Deployment) -> tuple[float, float]:
        """(share of the GPU claimed by a flag, model size in billions): servers sort by it, smallest first.

        A server without a flag claims no share up front (llama.cpp on the CPU, Ollama sized by its model), so it
        starts before the flagged ones, and they start seeing what it took: vLLM then refuses loudly when the rest
        is too small, instead of Ollama spilling to the CPU afterwards."""
        from servelab.serve.models import model_size_billion

        size = model_size_billion(deployment)
        return (self.memory_fraction(deployment) or 0.0, math.inf if size is None else size)


ENGINES: dict[str, type[EngineAdapter]] = {}


def register(adapter: type[EngineAdapter]) -> type[EngineAdapter]:
    ENGINES[adapter.kind] = adapter
    return adapter


_NOT_ADAPTERS = frozenset({"base", "containers"})
"""Modules of this folder that hold what the adapters share, not an engine."""


def known_kinds() -> list[str]:
    """Every engine kind that has an adapter module in this package."""
    found = pkgutil.iter_modules([str(Path(__file__).parent)])
    return sorted(info.name for info in found if info.name not in _NOT_ADAPTERS)


def adapter_for_kind(kind: str) -> EngineAdapter:
    """The adapter of an engine kind; each engine module registers itself on import."""
    if kind not in ENGINES:
        if kind not in known_kinds():
            raise EngineError(
                f"engine kind {kind!r} has no adapter; known kinds: {', '.join(known_kinds())}. "
                f"Add lib/servelab/serve/engines/{kind}.py (see docs/engines.md)"
            )
        importlib.import_module(f"servelab.serve.engines.{kind}")
        if kind not in ENGINES:
            raise EngineError(f"servelab/serve/engines/{kind}.py registers no adapter of kind {kind!r}; decorate its class with @register")
    return ENGINES[kind]()


def adapter_for(deployment: Deployment) -> EngineAdapter:
    """The adapter of `deployment.engine.kind`."""
    return adapter_for_kind(deployment.engine.kind)


def all_adapters() -> dict[str, EngineAdapter]:
    """Every engine's adapter, by kind (imports each engine module once)."""
    return {kind: adapter_for_kind(kind) for kind in known_kinds()}


def engine_packages() -> tuple[str, ...]:
    """The packages every engine's adapter names, for the manifest's versions."""
    return tuple(dict.fromkeys(name for adapter in all_adapters().values() for name in adapter.packages))


def start_order(deployments: Iterable[Deployment]) -> list[Deployment]:
    """The one start order, for native launch and for compose: by each adapter's `start_order_key` (share of the
    GPU claimed, then model size), ties in the params' order."""
    indexed = list(enumerate(deployments))

    def key(item: tuple[int, Deployment]) -> tuple[float, float, int]:
        index, deployment = item
        return (*adapter_for(deployment).start_order_key(deployment), index)

    return [deployment for _, deployment in sorted(indexed, key=key)]
