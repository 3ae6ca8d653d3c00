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
    returns the plan's text, or None when there is nothing to check (no GPU here and no total given)."""
    from servelab.serve.planner import DEFAULT_RESERVE_MIB, format_plan, plan

    reserve_mib = DEFAULT_RESERVE_MIB
    if total_mib is None:
        from servelab.observe import free_device_mib

        device = free_device_mib(params.memory.device_index)
        if device is None:
            return None
        total_mib = device.total_mib
        reserve_mib = max(DEFAULT_RESERVE_MIB, device.total_mib - device.free_mib)
    result = plan(params, total_mib=total_mib, reserve_mib=reserve_mib)
    if not any(footprint.memory == "gpu" for footprint in result.footprints):
        return None
    text = format_plan(result)
    if not result.fits:
        fix = (
            "set the suggested values in the params file"
            if result.suggestions
            else "lower the memory fractions or run fewer deployments together"
        )
        raise DeployError(f"the deployments do not fit on the GPU, so nothing was started; {fix}:\n{text}")
    return text
