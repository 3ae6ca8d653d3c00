"""What the engines' memory rules are made of: a model's shape, a predicted `Footprint`, and the sizes of
weights and KV caches. Each engine's own rule is its adapter's `footprint` (servelab.serve.engines); the
planner (servelab.serve.planner) adds them up in start order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servelab.params import Deployment

MIB = 1024 * 1024

BITS_PER_WEIGHT = {
    "f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.56, "q5_k_m": 5.69, "q5_0": 5.5,
    "q5_1": 6.0, "q4_k_m": 4.85, "q4_k_s": 4.58, "q4_1": 5.0, "q4_0": 4.5, "q3_k_m": 3.91, "q2_k": 3.35,
}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a checkpoint's config.json that memory depends on."""

    name: str
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    ollama_quantization: str = "q4_k_m"
    """The quantization of the model's default Ollama tag, for weights when no GGUF file is at hand."""

    def kv_bytes_per_token(self, dtype_bytes: float = 2.0) -> float:
        """K and V of every layer for one token."""
        return self.layers * self.kv_heads * self.head_dim * 2 * dtype_bytes


EMBEDDED_SHAPE = ModelShape("smollm2-135m", 134_515_008, 30, 3, 64, "q8_0")
"""SmolLM2-135M (HuggingFaceTB config.json), the embedded GGUF's model; servelab.serve.models has the served shapes."""
OLLAMA_DEFAULT_QUANTIZATION = {"tinyllama-1.1b": "q4_0", "yi-6b": "q4_0"}


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", text.lower())


def _model_shape(shape: Any) -> ModelShape:
    """A servelab.serve.models.Shape (config.json numbers) as the few numbers the planner needs."""
    config = shape.config
    heads = int(config["num_attention_heads"])
    return ModelShape(
        shape.name,
        int(shape.parameter_count()),
        int(config["num_hidden_layers"]),
        int(config.get("num_key_value_heads") or heads),
        int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        OLLAMA_DEFAULT_QUANTIZATION.get(shape.name, "q4_k_m"),
    )


def shape_for(deployment: Deployment) -> ModelShape | None:
    """The shape of a deployment's model: its `shape`, else the servelab.serve.models shape whose name or checkpoint the
    model names ('Qwen/Qwen2.5-3B-Instruct', 'qwen2.5:3b'), else the embedded SmolLM2; None when unknown."""
    from servelab.errors import ParamsError
    from servelab.serve import models

    if deployment.shape is not None:
        try:
            return _model_shape(models.resolve_shape(deployment.shape))
        except ParamsError:
            return None
    model = _squash(deployment.model)
    matches = [s for s in models.SHAPES.values() if _squash(s.name) in model or _squash(s.source) == model]
    if matches:
        return _model_shape(max(matches, key=lambda s: len(s.name)))
    return EMBEDDED_SHAPE if "smollm2" in model else None


def dtype_bytes(dtype: str) -> float:
    return 4.0 if dtype == "float32" else 2.0


def gguf_quantization(text: str, default: str) -> str:
    squashed = text.lower().replace("-", "_")
    for name in sorted(BITS_PER_WEIGHT, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(name)}([^a-z0-9]|$)", squashed):
            return name
    return default


def gguf_mib(model_path: str) -> float | None:
    """The size of a local GGUF file, MiB; None when `model_path` is not one."""
    path = Path(model_path).expanduser()
    return path.stat().st_size / MIB if path.suffix == ".gguf" and path.is_file() else None


def kv_cache(shape: ModelShape | None, budget_mib: float, bytes_per_value: float) -> tuple[float | None, int | None]:
    """The KV cache a budget holds: (MiB, tokens); (None, None) when the shape is unknown."""
    if shape is None:
        return None, None
    budget = max(0.0, budget_mib)
    return budget, int(budget * MIB // shape.kv_bytes_per_token(bytes_per_value))


def gguf_or_shape_weights_mib(model_path: str, model_name: str, shape: ModelShape | None) -> float | None:
    """Weights, MiB: the GGUF file's size, else parameters x the bits per weight of the quantization the name says."""
    size = gguf_mib(model_path)
    if size is not None:
        return size
    if shape is None:
        return None
    bits = BITS_PER_WEIGHT[gguf_quantization(model_name, shape.ollama_quantization)]
    return shape.parameters * bits / 8 / MIB
