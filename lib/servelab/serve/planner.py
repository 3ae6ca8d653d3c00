"""Predict each deployment's memory under its framework's own rules, and say whether a set of them fits one GPU.

Rules (MiB; `total` is the GPU's total memory; constants below, calibration in docs/memory.md):
- vLLM v1: gpu_memory_utilization x total + VLLM_CUDA_CONTEXT_MIB. The budget holds weights, activations and
  the KV cache together; vLLM refuses to start unless that budget is free after its CUDA context is made.
- SGLang: CUDA context + mem_fraction_static x (memory free when it starts). The fraction is of the memory free
  after its context is made, so a server started after others gets less; on an empty GPU this is about
  mem_fraction_static x total + context. Activations and CUDA graphs come on top (not modelled).
- Ollama: weights (GGUF size, or parameters x bits per weight) + KV cache (num_ctx x num_parallel x layers x
  kv_heads x head_dim x 2 x 2 bytes) + OLLAMA_OVERHEAD_MIB.
- llama.cpp (CPU): the same in HOST memory: GGUF size + KV (ctx_size x ...) + LLAMACPP_HOST_OVERHEAD_MIB.
- The seed's formula, kept for comparison: weights + available x utilization + overhead (`seed_formula_mib`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servelab.params import Deployment, LlamaCppEngine, OllamaEngine, Params, SglangEngine, VllmEngine

MIB = 1024 * 1024

VLLM_CUDA_CONTEXT_MIB = 471.0
"""Memory a vLLM v1 process holds beyond gpu_memory_utilization x total: the mean of 364, 578 and 471 MiB
measured on an H100 80GB (TinyLlama 0.15, Qwen2.5-3B 0.25, Yi-6B 0.50; shared/device/measured-h100-vllm.md)."""
VLLM_RUNTIME_MIB = 992.0
"""Non-KV, non-weight memory inside vLLM's budget (activation peak, sampler, CUDA graphs): budget - weights - KV
from vLLM's own log in the same measurements (0.73, 1.00, 1.18 GiB), mean. Only used for the KV estimate."""
SGLANG_CUDA_CONTEXT_MIB = VLLM_CUDA_CONTEXT_MIB
"""Assumed equal to vLLM's (same torch, same driver); not measured."""
OLLAMA_OVERHEAD_MIB = 600.0
"""CUDA context plus llama.cpp's compute graph inside an Ollama runner; a round figure, not measured here."""
LLAMACPP_HOST_OVERHEAD_MIB = 34.0
"""llama-server's RSS beyond GGUF size + KV cache: 33.7-34.4 MiB measured with SmolLM2-135M Q4_1 at ctx 2048,
4096 and 8192 (b-build of llama-cpp-python 0.3.36) on the CPU machine. Compute buffers grow with the model."""
DEFAULT_RESERVE_MIB = 512.0
"""Kept free on the GPU: what the driver holds before any deployment plus a margin for start-up peaks (the H100
run peaked 658 MiB above its steady state)."""

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


# ----------------------------------------------------------------------------------------------- one deployment
@dataclass(frozen=True)
class Footprint:
    """What one deployment is predicted to hold, MiB; `memory` says whether on the GPU or the host."""

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


def _dtype_bytes(dtype: str) -> float:
    return 4.0 if dtype == "float32" else 2.0


def _gguf_quantization(text: str, default: str) -> str:
    squashed = text.lower().replace("-", "_")
    for name in sorted(BITS_PER_WEIGHT, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(name)}([^a-z0-9]|$)", squashed):
            return name
    return default


def _gguf_mib(deployment: Deployment) -> float | None:
    if deployment.model == "smollm2":
        from servelab.serve.engines.llamacpp import embedded_gguf

        return embedded_gguf().stat().st_size / MIB
    path = Path(deployment.model).expanduser()
    return path.stat().st_size / MIB if path.suffix == ".gguf" and path.is_file() else None


def _kv(shape: ModelShape | None, budget_mib: float, dtype_bytes: float) -> tuple[float | None, int | None]:
    if shape is None:
        return None, None
    budget = max(0.0, budget_mib)
    return budget, int(budget * MIB // shape.kv_bytes_per_token(dtype_bytes))


def predict(deployment: Deployment, total_mib: float, free_at_start_mib: float | None = None) -> Footprint:
    """The predicted footprint of one deployment on a GPU of `total_mib` with `free_at_start_mib` free when it starts."""
    engine, shape = deployment.engine, shape_for(deployment)
    free = total_mib if free_at_start_mib is None else free_at_start_mib
    if isinstance(engine, VllmEngine):
        budget = engine.gpu_memory_utilization * total_mib
        weights = shape.parameters * _dtype_bytes(engine.dtype) / MIB if shape else None
        kv, tokens = _kv(shape, budget - (weights or 0) - VLLM_RUNTIME_MIB, _dtype_bytes(engine.dtype))
        short = tokens is not None and engine.max_model_len is not None and tokens < engine.max_model_len
        notes = (f"KV cache of ~{tokens} tokens is below max_model_len {engine.max_model_len}: vLLM will refuse to start",) if short else ()
        return Footprint(deployment.name, "vllm", "gpu", budget + VLLM_CUDA_CONTEXT_MIB, weights, kv, tokens,
                         VLLM_CUDA_CONTEXT_MIB, "gpu_memory_utilization x total + CUDA context", notes)
    if isinstance(engine, SglangEngine):
        static = engine.mem_fraction_static * max(0.0, free - SGLANG_CUDA_CONTEXT_MIB)
        weights = shape.parameters * _dtype_bytes(engine.dtype) / MIB if shape else None
        kv, tokens = _kv(shape, static - (weights or 0), _dtype_bytes(engine.dtype))
        sglang_notes: tuple[str, ...] = ("activations and CUDA graphs come on top (not modelled)",)
        if tokens == 0:
            sglang_notes += ("no room left for a KV cache after the weights: SGLang will refuse to start",)
        return Footprint(deployment.name, "sglang", "gpu", static + SGLANG_CUDA_CONTEXT_MIB, weights, kv, tokens,
                         SGLANG_CUDA_CONTEXT_MIB, "mem_fraction_static x free at start + CUDA context", sglang_notes)
    if isinstance(engine, OllamaEngine):
        weights = _weights_gguf_or_shape(deployment, shape)
        slots = engine.num_ctx * engine.num_parallel
        kv = shape.kv_bytes_per_token() * slots / MIB if shape else None
        known = weights is not None and kv is not None
        predicted = (weights or 0) + (kv or 0) + OLLAMA_OVERHEAD_MIB
        return Footprint(deployment.name, "ollama", "gpu", predicted, weights, kv, slots if shape else None, OLLAMA_OVERHEAD_MIB,
                         "weights + num_ctx x num_parallel x KV per token + overhead",
                         () if known else ("model shape unknown: only the overhead is counted",))
    assert isinstance(engine, LlamaCppEngine)
    weights = _weights_gguf_or_shape(deployment, shape)
    kv = shape.kv_bytes_per_token() * engine.ctx_size / MIB if shape else None
    predicted = (weights or 0) + (kv or 0) + LLAMACPP_HOST_OVERHEAD_MIB
    return Footprint(deployment.name, "llamacpp", "host", predicted, weights, kv, engine.ctx_size if shape else None,
                     LLAMACPP_HOST_OVERHEAD_MIB, "GGUF size + ctx_size x KV per token + overhead (host RSS)")


def _weights_gguf_or_shape(deployment: Deployment, shape: ModelShape | None) -> float | None:
    size = _gguf_mib(deployment)
    if size is not None:
        return size
    if shape is None:
        return None
    bits = BITS_PER_WEIGHT[_gguf_quantization(deployment.model, shape.ollama_quantization)]
    return shape.parameters * bits / 8 / MIB


def required_mib(deployment: Deployment, total_mib: float, free_mib: float | None = None) -> float:
    """GPU memory that must be free before `deployment` starts, MiB; 0 for a CPU-only llama.cpp server.

    vLLM refuses to start with less than gpu_memory_utilization x total free after its context. SGLang takes
    mem_fraction_static of what is free when it starts: without `free_mib` it asks for what it takes on an empty
    GPU; with it (the free memory now), for its share of that, so a co-located SGLang whose fractions were worked
    out for the memory left by the servers before it is not refused.
    """
    footprint = predict(deployment, total_mib, free_mib)
    return footprint.predicted_mib if footprint.memory == "gpu" else 0.0


def seed_formula_mib(weights_mib: float, available_mib: float, utilization: float, overhead_mib: float) -> float:
    """The seed's 'Actual Memory = Model Weights + (Available Memory x gpu_utilization) + Overhead'. Wrong for
    vLLM v1, whose utilization is a share of TOTAL memory that already holds the weights (docs/memory.md)."""
    return weights_mib + available_mib * utilization + overhead_mib


# ----------------------------------------------------------------------------------------------- a set of them
@dataclass(frozen=True)
class Suggestion:
    """A flag value that would make the set fit, and the KV cache it leaves."""

    deployment: str
    flag: str
    current: float
    suggested: float
    kv_cache_mib: float | None
    kv_tokens: int | None
    note: str = ""


@dataclass(frozen=True)
class Plan:
    """Predicted footprints in start order, whether the GPU holds them all, and flags that would make it."""

    total_mib: float
    reserve_mib: float
    footprints: tuple[Footprint, ...]
    gpu_mib: float
    fits: bool
    headroom_mib: float
    suggestions: tuple[Suggestion, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def frame(self) -> Any:
        """The footprints as a pandas DataFrame, one row per deployment."""
        import pandas as pd

        return pd.DataFrame([vars(f) for f in self.footprints])


def _predict_in_order(deployments: Sequence[Deployment], total_mib: float, reserve_mib: float) -> tuple[list[Footprint], list[str]]:
    footprints, warnings, held = [], [], 0.0
    for deployment in deployments:
        free = total_mib - reserve_mib - held
        footprint = predict(deployment, total_mib, free)
        if footprint.memory == "gpu":
            if isinstance(deployment.engine, VllmEngine) and footprint.predicted_mib > free:
                warnings.append(f"{deployment.name}: vLLM needs {footprint.predicted_mib:,.0f} MiB free at its start, "
                                f"{free:,.0f} MiB would be; it will refuse to start")
            held += footprint.predicted_mib
        warnings.extend(f"{deployment.name}: {note}" for note in footprint.notes if "refuse" in note)
        footprints.append(footprint)
    return footprints, warnings


def plan(params: Params | Sequence[Deployment], total_mib: float | None = None, reserve_mib: float = DEFAULT_RESERVE_MIB,
         device_index: int = 0) -> Plan:
    """Predict every deployment in start order on a GPU of `total_mib` (default: the local GPU's) and check the sum.

    When the GPU deployments do not fit in total - reserve, the vLLM and SGLang fractions are scaled by one common
    factor so that they do, and each new value is suggested with the KV cache it leaves.
    """
    deployments = list(params.deployments if isinstance(params, Params) else params)
    if total_mib is None:
        from servelab.errors import ParamsError
        from servelab.observe.nvml import free_device_mib

        device = free_device_mib(device_index)
        if device is None:
            raise ParamsError("no GPU is visible here to size the plan; pass total_mib (servelab plan --total-mib 81559)")
        total_mib = device.total_mib
    # The deployer's own start order; imported here because the deployer may one day import the planner.
    from servelab.serve.deploy import start_order

    ordered = start_order(tuple(deployments))
    footprints, warnings = _predict_in_order(ordered, total_mib, reserve_mib)
    gpu = sum(f.predicted_mib for f in footprints if f.memory == "gpu")
    fits = gpu + reserve_mib <= total_mib and not any("refuse" in w for w in warnings)
    suggestions = () if fits else _scale_fractions(ordered, footprints, total_mib, reserve_mib)
    return Plan(total_mib, reserve_mib, tuple(footprints), gpu, fits, total_mib - reserve_mib - gpu, suggestions, tuple(warnings))


def _scale_fractions(ordered: list[Deployment], footprints: list[Footprint], total_mib: float, reserve_mib: float) -> tuple[Suggestion, ...]:
    flexible = [d for d in ordered if isinstance(d.engine, (VllmEngine, SglangEngine))]
    fixed = sum(f.predicted_mib for f, d in zip(footprints, ordered, strict=True) if f.memory == "gpu" and d not in flexible)
    contexts = VLLM_CUDA_CONTEXT_MIB * len(flexible)
    budgets = {d.name: f.predicted_mib - f.overhead_mib for f, d in zip(footprints, ordered, strict=True) if d in flexible}
    room = total_mib - reserve_mib - fixed - contexts
    if not flexible or room <= 0 or sum(budgets.values()) <= 0:
        return ()
    factor = min(1.0, room / sum(budgets.values()))
    suggestions, held = [], fixed
    for deployment in ordered:
        if deployment not in flexible:
            continue
        engine = deployment.engine
        target = budgets[deployment.name] * factor
        if isinstance(engine, VllmEngine):
            flag, current = "gpu_memory_utilization", engine.gpu_memory_utilization
            value = math.floor(target / total_mib * 1000) / 1000
            new = deployment.model_copy(update={"engine": engine.model_copy(update={flag: value})})
            free = total_mib - reserve_mib - held
        else:
            assert isinstance(engine, SglangEngine)
            flag, current = "mem_fraction_static", engine.mem_fraction_static
            free = total_mib - reserve_mib - held
            value = math.floor(target / max(1.0, free - SGLANG_CUDA_CONTEXT_MIB) * 1000) / 1000
            new = deployment.model_copy(update={"engine": engine.model_copy(update={flag: value})})
        footprint = predict(new, total_mib, free)
        held += footprint.predicted_mib
        suggestions.append(Suggestion(deployment.name, flag, current, value, footprint.kv_cache_mib, footprint.kv_tokens,
                                      "; ".join(footprint.notes)))
    return tuple(suggestions)


def format_plan(result: Plan) -> str:
    """The plan as text for the CLI: one line per deployment, the verdict, then warnings and suggestions."""
    lines = [f"GPU {result.total_mib:,.0f} MiB, {result.reserve_mib:,.0f} MiB kept free; deployments in start order:"]
    for f in result.footprints:
        kv = f", KV {f.kv_cache_mib:,.0f} MiB (~{f.kv_tokens:,} tokens)" if f.kv_cache_mib is not None and f.kv_tokens is not None else ""
        weights = f"weights {f.weights_mib:,.0f} MiB" if f.weights_mib is not None else "weights unknown"
        lines.append(f"  {f.deployment:<20} {f.framework:<8} {f.memory:<4} {f.predicted_mib:>10,.0f} MiB  ({weights}{kv}; {f.formula})")
    verdict = "fits" if result.fits else "does NOT fit"
    lines.append(f"GPU total {result.gpu_mib:,.0f} MiB: {verdict} (headroom {result.headroom_mib:,.0f} MiB)")
    lines += [f"warning: {w}" for w in result.warnings]
    for s in result.suggestions:
        kv = f" leaves KV {s.kv_cache_mib:,.0f} MiB (~{s.kv_tokens:,} tokens)" if s.kv_cache_mib is not None and s.kv_tokens is not None else ""
        lines.append(f"suggest {s.deployment}: {s.flag} {s.current} -> {s.suggested}{kv}" + (f" ({s.note})" if s.note else ""))
    return "\n".join(lines)
