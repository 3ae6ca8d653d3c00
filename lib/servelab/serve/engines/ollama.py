"""Ollama (`ollama serve`): its own API (/api/generate, /api/chat, NDJSON streaming), one model per server here.

Each deployment gets its own `ollama serve` on its own port, so GPU memory is attributed per model (per
process). The server holds no model until asked: `after_ready` pulls the tag if it is missing and loads it.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from servelab.errors import EngineError, ParamsError
from servelab.params import Deployment, OllamaEngine
from servelab.serve.engines.base import EngineAdapter, Footprint, LaunchSpec, LoadedModel, register
from servelab.serve.engines.containers import gpu_service, healthcheck
from servelab.serve.footprints import MIB, gguf_or_shape_weights_mib, shape_for

logger = logging.getLogger(__name__)

OLLAMA_OVERHEAD_MIB = 600.0
"""CUDA context plus llama.cpp's compute graph inside an Ollama runner; a round figure, not measured here."""


def _engine(deployment: Deployment) -> OllamaEngine:
    engine = deployment.engine
    assert isinstance(engine, OllamaEngine)
    if deployment.shape is not None:
        raise ParamsError(
            f"deployment {deployment.name!r}: ollama cannot serve shape {deployment.shape!r} (dummy weights); "
            "remove `shape` or use engine.kind vllm or sglang"
        )
    return engine


def keep_alive_value(keep_alive: str) -> str | int:
    """The API's form: a number of seconds (-1 forever, 0 unload now) or a Go duration such as '5m'."""
    return int(keep_alive) if keep_alive.lstrip("-").isdigit() else keep_alive


def server_environment(engine: OllamaEngine, host: str, port: int) -> dict[str, str]:
    environment = {
        "OLLAMA_HOST": f"{host}:{port}",
        "OLLAMA_NUM_PARALLEL": str(engine.num_parallel),
        "OLLAMA_KEEP_ALIVE": engine.keep_alive,
        "OLLAMA_CONTEXT_LENGTH": str(engine.num_ctx),
    }
    if engine.max_loaded_models is not None:
        environment["OLLAMA_MAX_LOADED_MODELS"] = str(engine.max_loaded_models)
    return environment


@register
class OllamaAdapter(EngineAdapter):
    kind = "ollama"
    display_name = "Ollama"
    api_flavour = "ollama"
    health_path = "/api/version"
    metrics_path = None
    loaded_models_path = "/api/ps"
    container_port = 11434

    def served_model_name(self, deployment: Deployment) -> str:
        """Ollama answers to the tag it loaded, for example 'qwen2.5:3b'."""
        return deployment.model

    def launch(self, deployment: Deployment, port: int, model_path: str) -> LaunchSpec:
        engine = _engine(deployment)
        return LaunchSpec(
            argv=[engine.binary, "serve", *engine.extra_args],
            env=server_environment(engine, "127.0.0.1", port),
        )

    def compose_service(self, deployment: Deployment, host_port: int) -> dict[str, Any]:
        engine = _engine(deployment)
        service = gpu_service(deployment, engine.image, host_port, self.container_port)
        service["volumes"] = ["ollama-models:/root/.ollama"]
        del service["shm_size"]
        service["command"] = ["serve", *engine.extra_args]
        service["environment"] = server_environment(engine, "0.0.0.0", self.container_port)
        # The image has no curl or python; `ollama list` asks the server through OLLAMA_HOST.
        service["healthcheck"] = healthcheck(deployment, ["CMD", "ollama", "list"])
        return service

    async def after_ready(self, client: httpx.AsyncClient, base_url: str, deployment: Deployment) -> None:
        """Pull the tag if this server lacks it, then load it with an empty prompt so that memory is taken now."""
        engine = _engine(deployment)
        tag = deployment.model
        timeout = deployment.startup_timeout_s
        try:
            shown = await client.post(base_url + "/api/show", json={"model": tag}, timeout=30.0)
            if shown.status_code == 404:
                logger.info("%s: pulling %s", deployment.name, tag)
                pulled = await client.post(base_url + "/api/pull", json={"model": tag, "stream": False}, timeout=timeout)
                if pulled.status_code != 200:
                    raise EngineError(
                        f"{deployment.name}: ollama could not pull {tag!r} (HTTP {pulled.status_code}: "
                        f"{pulled.text[:200]}); check the tag, or pull it by hand with `ollama pull {tag}`"
                    )
            loaded = await client.post(
                base_url + "/api/generate",
                json={"model": tag, "prompt": "", "keep_alive": keep_alive_value(engine.keep_alive)},
                timeout=timeout,
            )
        except httpx.HTTPError as error:
            raise EngineError(f"{deployment.name}: loading {tag!r} into ollama at {base_url} failed: {error!r}") from None
        if loaded.status_code != 200:
            raise EngineError(
                f"{deployment.name}: ollama did not load {tag!r} (HTTP {loaded.status_code}: {loaded.text[:200]})"
            )

    async def version(self, client: httpx.AsyncClient, base_url: str) -> str:
        try:
            response = await client.get(base_url + "/api/version", timeout=5.0)
            if response.status_code == 200:
                found = response.json().get("version")
                if found:
                    return f"ollama {found}"
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        return "unknown"

    def version_argv(self, deployment: Deployment) -> list[str] | None:
        return [_engine(deployment).binary, "--version"]

    def loaded_models(self, body: Any) -> list[LoadedModel]:
        """/api/ps: `size` is all the memory a model holds (weights, KV cache, graph), `size_vram` the part on the GPU;
        less on the GPU means Ollama put the rest in host memory (`ollama ps` shows '48%/52% CPU/GPU')."""
        models = body.get("models") if isinstance(body, dict) else None
        found = []
        for model in models or ():
            size = float(model.get("size") or 0) / MIB
            found.append(LoadedModel(str(model.get("name") or model.get("model") or "?"), size, float(model.get("size_vram") or 0) / MIB))
        return found

    def footprint(self, deployment: Deployment, total_mib: float, free_at_start_mib: float) -> Footprint:
        """Weights (GGUF size, or parameters x bits per weight) + KV cache (num_ctx x num_parallel x layers x kv_heads
        x head_dim x 2 x 2 bytes) + OLLAMA_OVERHEAD_MIB."""
        engine, shape = _engine(deployment), shape_for(deployment)
        weights = gguf_or_shape_weights_mib(deployment.model, deployment.model, shape)
        slots = engine.num_ctx * engine.num_parallel
        kv = shape.kv_bytes_per_token() * slots / MIB if shape else None
        known = weights is not None and kv is not None
        predicted = (weights or 0) + (kv or 0) + OLLAMA_OVERHEAD_MIB
        return Footprint(deployment.name, self.kind, "gpu", predicted, weights, kv, slots if shape else None, OLLAMA_OVERHEAD_MIB,
                         "weights + num_ctx x num_parallel x KV per token + overhead",
                         () if known else ("model shape unknown: only the overhead is counted",))
