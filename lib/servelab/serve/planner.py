"""Predict each deployment's memory under its engine's own rule, and say whether a set of them fits one GPU.

Each rule is its engine adapter's `footprint` (servelab.serve.engines; calibration in docs/memory.md):
- vLLM v1: gpu_memory_utilization x total + CUDA context;
- SGLang: CUDA context + mem_fraction_static x (memory free when it starts);
- Ollama: weights + KV cache (num_ctx x num_parallel) + overhead;
- llama.cpp (CPU): the same in HOST memory;
- endpoint: nothing predicted (servelab did not start it).
The seed's formula, kept for comparison: weights + available x utilization + overhead (`seed_formula_mib`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from textwrap import indent
from typing import Any

from servelab.params import Deployment, Params
from servelab.serve.engines.base import Footprint, adapter_for, start_order
from servelab.serve.footprints import ModelShape, shape_for

__all__ = ["DEFAULT_RESERVE_MIB", "Footprint", "ModelShape", "Plan", "Suggestion", "deployments_per_device", "devices_of", "format_plan", "format_plans",
           "gpus_of", "plan", "plan_per_device", "predict", "required_mib", "seed_formula_mib", "shape_for"]

DEFAULT_RESERVE_MIB = 512.0
"""Kept free on the GPU: what the driver holds before any deployment plus a margin for start-up peaks (the H100
run peaked 658 MiB above its steady state)."""


def predict(deployment: Deployment, total_mib: float, free_at_start_mib: float | None = None) -> Footprint:
    """The predicted footprint of one deployment on a GPU of `total_mib` with `free_at_start_mib` free when it starts."""
    free = total_mib if free_at_start_mib is None else free_at_start_mib
    return adapter_for(deployment).footprint(deployment, total_mib, free)


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
            adapter = adapter_for(deployment)
            if adapter.needs_budget_free_at_start() and footprint.predicted_mib > free:
                warnings.append(f"{deployment.name}: {adapter.display_name} needs {footprint.predicted_mib:,.0f} MiB free at its start, "
                                f"{free:,.0f} MiB would be; it will refuse to start")
            held += footprint.predicted_mib
        warnings.extend(f"{deployment.name}: {note}" for note in footprint.notes if "refuse" in note)
        footprints.append(footprint)
    return footprints, warnings


def plan(params: Params | Sequence[Deployment], total_mib: float, reserve_mib: float = DEFAULT_RESERVE_MIB) -> Plan:
    """Predict every deployment in start order on a GPU of `total_mib` and check the sum (the caller reads the
    local GPU's total, `servelab.observe.device_total_mib`, where none is given).

    When the GPU deployments do not fit in total - reserve, the vLLM and SGLang fractions are scaled by one common
    factor so that they do, and each new value is suggested with the KV cache it leaves.
    """
    deployments = list(params.deployments if isinstance(params, Params) else params)
    ordered = start_order(deployments)
    footprints, warnings = _predict_in_order(ordered, total_mib, reserve_mib)
    gpu = sum(f.predicted_mib for f in footprints if f.memory == "gpu")
    fits = gpu + reserve_mib <= total_mib and not any("refuse" in w for w in warnings)
    suggestions = () if fits else _scale_fractions(ordered, footprints, total_mib, reserve_mib)
    return Plan(total_mib, reserve_mib, tuple(footprints), gpu, fits, total_mib - reserve_mib - gpu, suggestions, tuple(warnings))


def _scale_fractions(ordered: list[Deployment], footprints: list[Footprint], total_mib: float, reserve_mib: float) -> tuple[Suggestion, ...]:
    pairs = list(zip(footprints, ordered, strict=True))
    flexible = [d for d in ordered if adapter_for(d).memory_fraction(d) is not None]
    fixed = sum(f.predicted_mib for f, d in pairs if f.memory == "gpu" and d not in flexible)
    contexts = sum(f.overhead_mib for f, d in pairs if d in flexible)
    budgets = {d.name: f.predicted_mib - f.overhead_mib for f, d in pairs if d in flexible}
    room = total_mib - reserve_mib - fixed - contexts
    if not flexible or room <= 0 or sum(budgets.values()) <= 0:
        return ()
    factor = min(1.0, room / sum(budgets.values()))
    suggestions, held = [], fixed
    for deployment in flexible:
        free = total_mib - reserve_mib - held
        scaled = adapter_for(deployment).scaled_to(deployment, budgets[deployment.name] * factor, total_mib, free)
        if scaled is None:
            continue
        footprint = predict(scaled.deployment, total_mib, free)
        held += footprint.predicted_mib
        suggestions.append(Suggestion(deployment.name, scaled.flag, scaled.current, scaled.suggested,
                                      footprint.kv_cache_mib, footprint.kv_tokens, "; ".join(footprint.notes)))
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


# ----------------------------------------------------------------------------------------------- several GPUs
def gpus_of(deployment: Deployment) -> tuple[int, ...]:
    """The GPUs a deployment runs on: its `gpus`, else the first tensor x data parallel ones (0 for most)."""
    if deployment.gpus is not None:
        return deployment.gpus
    needed = deployment.engine.gpus_needed()
    return tuple(range(needed))


def plan_per_device(params: Params | Sequence[Deployment], total_mib: float, reserve_mib: float = DEFAULT_RESERVE_MIB) -> dict[int, Plan]:
    """One `plan` per GPU, over the deployments that run on it (`gpus_of`); GPUs of `total_mib` each.

    A model split over several GPUs is planned on each of them by its own rule: vLLM's gpu_memory_utilization and
    SGLang's mem_fraction_static are per GPU, so each GPU holds that budget. An engine sized by its weights
    (Ollama, llama.cpp) is counted whole on every GPU it names, an upper bound: how it splits layers is not modelled.
    """
    return {index: plan(group, total_mib, reserve_mib) for index, group in deployments_per_device(params).items()}


def deployments_per_device(params: Params | Sequence[Deployment]) -> dict[int, list[Deployment]]:
    """GPU -> the deployments that run on it (`gpus_of`), in the params' order; GPUs ascending."""
    on_device: dict[int, list[Deployment]] = {}
    for deployment in params.deployments if isinstance(params, Params) else params:
        for index in gpus_of(deployment):
            on_device.setdefault(index, []).append(deployment)
    return dict(sorted(on_device.items()))


def devices_of(params: Params | Sequence[Deployment]) -> list[int]:
    """Every GPU the deployments run on (`gpus_of`), ascending."""
    return list(deployments_per_device(params))


def format_plans(plans: dict[int, Plan]) -> str:
    """Several GPUs' plans as text: each GPU's `format_plan` under a `GPU <index>:` line."""
    return "\n".join(f"GPU {index}:\n" + indent(format_plan(result), "  ") for index, result in plans.items())
