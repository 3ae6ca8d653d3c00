"""environment.yml mirrors pyproject.toml's dependencies and extras (conda or its pip section), names and version bounds alike."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _requirement(text: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", text)
    assert match, text
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_lists_exactly_pyprojects_dependencies_with_the_same_bounds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dict(_requirement(r) for r in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra])
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = dict(
        _requirement(d) for d in environment["dependencies"] if isinstance(d, str) and _requirement(d)[0] not in ("python", "pip")
    )
    from_pip = [d for section in environment["dependencies"] if isinstance(section, dict) for d in section.get("pip", [])]
    conda.update(_requirement(d) for d in from_pip if not d.startswith("-e"))
    assert conda == wanted
