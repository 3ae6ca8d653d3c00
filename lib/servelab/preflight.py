"""What is checked before a run starts anything: the files it reads and whether its deployments fit the GPU.

`servelab validate`, `servelab run --dry-run` and `servelab run` call these, so a run that cannot work is refused
before a folder is made or a server is started, and a dry run says so too.
"""

from __future__ import annotations

import math
from pathlib import Path

from servelab.errors import DeployError, ParamsError
from servelab.params import Params


def check_total_mib(total_mib: float | None) -> float | None:
    """`--total-mib` as given, refused unless it is a finite number of MiB above 0."""
    if total_mib is not None and not (math.isfinite(total_mib) and total_mib > 0):
        raise ParamsError(f"--total-mib {total_mib:g}: give the GPU's memory as a number of MiB above 0, e.g. --total-mib 81559")
    return total_mib


def check_prompts_file(params: Params, source: str, *, also_from: Path | None = None) -> None:
    """Refuse a sweep.prompts_file that is not a file. A relative path is read from here, and by the notebooks from
    `also_from` (their working folder), so a run needs it found from both."""
    name = params.sweep.prompts_file
    if name is None:
        return
    path = Path(name).expanduser()
    if not path.is_file():
        raise ParamsError(f"{source}: sweep.prompts_file {name}: no such file; give a local ShareGPT-format JSON file")
    if also_from is not None and not path.is_absolute() and not (also_from / path).is_file():
        raise ParamsError(
            f"{source}: sweep.prompts_file {name} is a relative path, and the notebooks run in {also_from}, where it "
            f"is not found; give its absolute path ({path.resolve()})"
        )


def check_memory(params: Params, total_mib: float | None = None) -> str | None:
    """Plan every deployment before any starts, and refuse a mix that does not fit with the planner's suggested
    fractions. Against `total_mib` when given, else the local GPU (what other processes hold already counts);
    returns the plan's text, or None when there is nothing to check (no GPU here and no total given). Deployments
    on several GPUs (`gpus`, parallel sizes) are planned on each GPU they use, every GPU of `total_mib`."""
    from servelab.serve.planner import deployments_per_device, format_plan, format_plans, plan

    per_device = deployments_per_device(params)
    if len(per_device) > 1:
        plans = {}
        for index, on_device in per_device.items():
            budget = _budget(index, total_mib)
            if budget is None:
                return None
            plans[index] = plan(on_device, total_mib=budget[0], reserve_mib=budget[1])
        results, text = list(plans.values()), format_plans(plans)
        where = "on GPU " + ", ".join(str(index) for index, result in plans.items() if not result.fits)
    else:
        budget = _budget(params.memory.device_index, total_mib)
        if budget is None:
            return None
        results = [plan(params, total_mib=budget[0], reserve_mib=budget[1])]
        text, where = format_plan(results[0]), "on the GPU"
    if not any(footprint.memory == "gpu" for result in results for footprint in result.footprints):
        return None
    if not all(result.fits for result in results):
        fix = (
            "set the suggested values in the params file"
            if any(result.suggestions for result in results)
            else "lower the memory fractions or run fewer deployments together"
        )
        raise DeployError(f"the deployments do not fit {where}, so nothing was started; {fix}:\n{text}")
    return text


def _budget(device_index: int, total_mib: float | None) -> tuple[float, float] | None:
    """(total, reserve) MiB to plan GPU `device_index` with: `total_mib` and the default reserve when given, else
    the local GPU's total and what is held there already; None without either."""
    from servelab.serve.planner import DEFAULT_RESERVE_MIB

    if total_mib is not None:
        return total_mib, DEFAULT_RESERVE_MIB
    from servelab.observe import free_device_mib

    device = free_device_mib(device_index)
    if device is None:
        return None
    return device.total_mib, max(DEFAULT_RESERVE_MIB, device.total_mib - device.free_mib)
