"""environment.yml mirrors pyproject.toml's dependencies, names and version bounds alike, and the conda route it
describes is the one make takes."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = {"cmake", "cxx-compiler"}
"""What scripts/install-engine.sh needs to build llama-server, beyond Python packages."""
NOT_ON_CONDA_FORGE = {"playwright"}
"""Python packages conda-forge does not carry: environment.yml takes them from PyPI, under pip."""


def _requirement(text: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", text)
    assert match, text
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def _environment() -> tuple[list[str], list[str]]:
    dependencies = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    conda = [d for d in dependencies if isinstance(d, str)]
    pip = [p for d in dependencies if isinstance(d, dict) for p in d.get("pip", [])]
    return conda, pip


def test_environment_yml_lists_exactly_pyprojects_dependencies_with_the_same_bounds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dict(_requirement(r) for r in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra])
    conda, pip = _environment()
    listed = [_requirement(d) for d in conda if _requirement(d)[0] not in {"python", "pip"} | BUILD_TOOLS]
    listed += [_requirement(p) for p in pip if not p.startswith("-e")]
    assert dict(listed) == wanted
    assert len(listed) == len(wanted)


def test_environment_yml_spells_names_as_conda_forge_does_and_has_the_engine_build_tools():
    """Expectation: packages conda-forge lacks come from pip, conda-forge's underscore spelling of
    prometheus_client is used, and cmake and a C++ compiler are there for llama-server's build."""
    conda, pip = _environment()
    conda_names = {re.split(r"[<>=]", d)[0] for d in conda}
    pip_names = {re.split(r"[<>=]", p)[0] for p in pip}
    assert NOT_ON_CONDA_FORGE <= pip_names and not NOT_ON_CONDA_FORGE & conda_names
    assert "prometheus_client" in conda_names and "prometheus-client" not in conda_names
    assert BUILD_TOOLS <= conda_names


def test_make_uses_an_active_conda_env_instead_of_building_a_venv(tmp_path):
    """Expectation: with CONDA_PREFIX set (`conda activate servelab`), `make -n demo` installs into and runs with
    that env's python, and names no .venv; without it, make builds .venv as before."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    environment = {"PATH": "/usr/bin:/bin", "CONDA_PREFIX": str(tmp_path)}
    planned = subprocess.run(["make", "-n", "demo"], cwd=REPO, env=environment, capture_output=True, text=True, check=True).stdout
    assert f"{tmp_path}/bin/python -m pip install" in planned and f"{tmp_path}/bin/python -m servelab.cli run" in planned
    assert ".venv/" not in planned and "venv .venv" not in planned
    planned = subprocess.run(["make", "-n", "demo"], cwd=REPO, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout
    assert ".venv/bin/python -m servelab.cli run" in planned
