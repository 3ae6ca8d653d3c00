"""Bad params through the real CLI entry point: one clear error each time (exit 2, 'servelab: ...'), never a
traceback, and never a hang.

Hypothesis builds the bad files: wrong types and out-of-range values at every key, unknown keys anywhere,
unknown framework, load and model names, random text and bytes, deep nesting, oversized files and YAML alias
bombs. Each file goes through `servelab.cli.main(["validate", path])` and `main(["run", path, "--dry-run"])`.
Examples are derandomized so that every run of the suite tries the same ones (counts in docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servelab.cli import main

BASE: dict[str, Any] = {
    "name": "fuzz",
    "deployments": [
        {"name": "a", "model": "smollm2", "engine": {"kind": "llamacpp", "parallel_slots": 2}, "startup_timeout_s": 60},
        {"name": "b", "model": "Qwen/Qwen2.5-0.5B", "engine": {"kind": "vllm", "gpu_memory_utilization": 0.4}},
    ],
    "sweep": {
        "languages": ["en", "ko"],
        "input_tokens": 64,
        "output_tokens": 32,
        "load": [{"kind": "concurrency", "values": [1, 4]}, {"kind": "poisson", "values": [2.5], "max_concurrency": 8}],
        "requests_per_point": 8,
        "request_timeout_s": 30,
    },
    "memory": {"sample_hz": 10},
    "policy": {"on_engine_death": "continue", "max_error_rate": 0.3},
}
LEAVES: list[tuple[Any, ...]] = []


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _leaves(item, (*path, index))
    else:
        LEAVES.append(path)


_leaves(BASE)
MAPPINGS = [(), ("deployments", 0), ("deployments", 0, "engine"), ("sweep",), ("sweep", "load", 0), ("memory",), ("policy",)]
CONTAINERS = [*MAPPINGS[1:], ("deployments",), ("sweep", "load"), ("sweep", "languages"), ("sweep", "load", 0, "values")]


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    _at(data, path[:-1])[path[-1]] = value
    return data


NUMERIC = [path for path in LEAVES if isinstance(_at(BASE, path), int | float) and not isinstance(_at(BASE, path), bool)]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), st.binary(max_size=10).map(repr)
)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
extreme_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=-1),
    st.integers(min_value=10**8, max_value=10**30),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e-308]),
)
names = st.text(min_size=1, max_size=40)


containers = st.one_of(st.lists(anything, max_size=3), st.dictionaries(st.text(max_size=8), anything, max_size=3))


@st.composite
def wrong_types(draw: st.DrawFn) -> dict[str, Any]:
    """A list or mapping where a scalar belongs, or a scalar where a list or mapping belongs: no coercion helps."""
    if draw(st.booleans()):
        return _with(draw(st.sampled_from(LEAVES)), draw(containers))
    return _with(draw(st.sampled_from(CONTAINERS)), draw(scalars))


@st.composite
def out_of_range(draw: st.DrawFn) -> dict[str, Any]:
    return _with(draw(st.sampled_from(NUMERIC)), draw(extreme_numbers))


@st.composite
def unknown_keys(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    where = _at(data, draw(st.sampled_from(MAPPINGS)))
    key = "zz" + draw(st.text(max_size=20))  # no key of the schema starts with zz
    where[key] = draw(anything)
    return data


@st.composite
def unknown_names(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    which = draw(st.sampled_from(["framework", "load", "language", "model", "deployment", "api", "policy"]))
    name = draw(names)
    if which == "framework":
        data["deployments"][0]["engine"]["kind"] = name
    elif which == "load":
        data["sweep"]["load"][0]["kind"] = name
    elif which == "language":
        data["sweep"]["languages"] = [name]
    elif which == "model":
        data["deployments"][1]["model"] = name
    elif which == "deployment":
        data["deployments"][0]["name"] = name
    elif which == "api":
        data["sweep"]["api"] = name
    else:
        data["policy"]["on_engine_death"] = name
    return data


def _nested(depth: int) -> str:
    return "name: fuzz\nsweep: " + "[" * depth + "1" + "]" * depth + "\n"


def _alias_bomb(fanout: int, levels: int) -> str:
    rows = ["a0: &a0 [" + ", ".join(["x"] * fanout) + "]"]
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]" for i in range(1, levels)]
    return "\n".join(rows) + f"\nname: fuzz\ndeployments: *a{levels - 1}\n"


def _huge(repeats: int) -> str:
    return "name: fuzz\ndescription: " + "x" * repeats + "\n"


def _check(text: str | bytes, invalid: bool) -> str:
    """Run validate and run --dry-run on the file; assert exit 0 (valid) or 2 with one clear message."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        for argv in (["validate", str(path)], ["run", str(path), "--dry-run"]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            message = err.getvalue()
            assert code in (0, 2), (argv, code, message)
            assert "Traceback" not in message and "Traceback" not in out.getvalue()
            if invalid:
                assert code == 2, f"{argv[0]} accepted a bad file:\n{text!r:.500}"
            if code == 2:
                assert message.startswith("servelab: "), message
                assert len(message.splitlines()) <= 25, message
    return message


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
CASES: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], str | bytes], bool, int]] = [
    ("wrong types", wrong_types(), _dump, True, 120),
    ("out-of-range values", out_of_range(), _dump, True, 80),
    ("unknown keys", unknown_keys(), _dump, True, 80),
    ("unknown framework, load, model and other names", unknown_names(), _dump, False, 80),
    ("random text", st.text(max_size=300), lambda t: t, False, 80),
    ("random bytes", st.binary(max_size=300), lambda b: b, False, 60),
    ("deep nesting", st.integers(min_value=20, max_value=2500), _nested, True, 15),
    ("YAML alias bombs", st.tuples(st.integers(5, 12), st.integers(4, 9)), lambda t: _alias_bomb(*t), True, 10),
    ("oversized files", st.integers(min_value=1_000_001, max_value=3_000_000), _huge, True, 3),
]


@pytest.mark.parametrize(("label", "strategy", "render", "invalid", "examples"), CASES, ids=[c[0] for c in CASES])
def test_bad_params_get_one_clear_error_through_the_cli_never_a_traceback(label, strategy, render, invalid, examples):
    """Expectation: for every generated file, `servelab validate` and `servelab run --dry-run` exit 0 (only where
    the input may be valid: names that are merely unknown, random text that happens to parse) or exit 2 with a
    message that starts 'servelab: ' and fits on a screen, and neither ever prints a traceback or hangs."""

    tried: list[None] = []

    @settings(FUZZ, max_examples=examples)
    @given(strategy)
    def fuzz(example: Any) -> None:
        tried.append(None)
        _check(render(example), invalid)

    fuzz()
    print(f"{label}: {len(tried)} examples")
    assert len(tried) >= 0.8 * examples, f"only {len(tried)} of {examples} examples were tried"


def test_a_valid_base_file_is_accepted_so_the_fuzzing_starts_from_good_params():
    """Expectation: the unmodified base params validate (exit 0), so each rejection above is the mutation's doing."""
    _check(_dump(BASE), invalid=False)
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(out):
        path = Path(folder) / "base.yaml"
        path.write_text(_dump(BASE))
        assert main(["run", str(path), "--dry-run"]) == 0
    assert "load point(s) for 2 deployment(s)" in out.getvalue()


def test_a_grid_too_large_to_run_is_refused_with_its_size_and_the_fix():
    """Expectation: 5 languages x 2,100 concurrency values (10,500 points) is refused with the count and the fix."""
    data = copy.deepcopy(BASE)
    data["deployments"] = data["deployments"][:1]
    data["sweep"]["languages"] = ["en", "ko", "zh", "ja", "es"]
    data["sweep"]["load"] = [{"kind": "concurrency", "values": list(range(1, 2101))}]
    message = _check(_dump(data), invalid=True)
    assert "10,500 load points" in message and "split it" in message
