"""Checked before anything starts: the memory plan (`servelab plan`, `run --dry-run`, `run`), `--total-mib`, the
prompts file, and the gaps a skeptical user found in validation (repeated keys, booleans as numbers, secret
flags, misleading second lines). Every case goes through the real CLI entry point, `servelab.cli.main`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from servelab.cli import main

H200_MIB = "143771"
"""An H200's total memory as NVML reports it."""


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _params(folder: Path, deployments: list[dict], **sweep: object) -> Path:
    data = {
        "name": "preflight",
        "deployments": deployments,
        "sweep": {**sweep, "load": sweep.get("load", [{"kind": "concurrency", "values": [1]}]), "requests_per_point": sweep.get("requests_per_point", 2)},
    }
    path = folder / "preflight.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _vllm(name: str, fraction: float) -> dict:
    return {"name": name, "model": "Qwen/Qwen2.5-3B-Instruct", "engine": {"kind": "vllm", "gpu_memory_utilization": fraction}}


FOUR_SUMMING_TO_ONE = [_vllm("a", 0.4), _vllm("b", 0.3), _vllm("c", 0.2), _vllm("d", 0.1)]
"""The H200 mix of the issue: fractions summing to 1.00, which leaves no room for four CUDA contexts."""


def test_plan_exits_non_zero_when_the_mix_does_not_fit_and_zero_when_it_does(tmp_path, capsys):
    """Expectation: `servelab plan` on four vLLM deployments whose fractions sum to 1.00 prints "does NOT fit"
    with a suggested gpu_memory_utilization for each, and exits 1; the suggested fractions, written back, fit
    and exit 0."""
    code, text = _cli(capsys, "plan", str(_params(tmp_path, FOUR_SUMMING_TO_ONE)), "--total-mib", H200_MIB)
    assert code == 1 and "does NOT fit" in text
    suggested = {line.split()[1].rstrip(":"): float(line.split()[5]) for line in text.splitlines() if line.startswith("suggest ")}
    assert sorted(suggested) == ["a", "b", "c", "d"]
    fitting = [_vllm(name, fraction) for name, fraction in suggested.items()]
    code, text = _cli(capsys, "plan", str(_params(tmp_path, fitting)), "--total-mib", H200_MIB)
    assert code == 0 and "fits" in text and "NOT" not in text


def test_plan_and_dry_run_plan_each_gpu_of_a_two_gpu_mix_and_refuse_naming_the_gpu_that_does_not_fit(tmp_path, capsys):
    """Expectation: two groups of 0.4 + 0.3, one on each GPU, fit (each GPU on its own, not 1.4 of one GPU);
    raising GPU 1's pair to 0.6 + 0.5 makes `plan` exit 1 and `run --dry-run` refuse, both naming GPU 1."""
    on_each = [_vllm("a0", 0.4) | {"gpus": [0]}, _vllm("b0", 0.3) | {"gpus": [0]},
               _vllm("a1", 0.4) | {"gpus": [1]}, _vllm("b1", 0.3) | {"gpus": [1]}]
    code, text = _cli(capsys, "plan", str(_params(tmp_path, on_each)), "--total-mib", H200_MIB)
    assert code == 0 and "GPU 0:" in text and "GPU 1:" in text and "NOT" not in text
    code, text = _cli(capsys, "run", str(_params(tmp_path, on_each)), "--dry-run", "--total-mib", H200_MIB)
    assert code == 0 and "GPU 1:" in text
    too_big = on_each[:2] + [_vllm("a1", 0.6) | {"gpus": [1]}, _vllm("b1", 0.5) | {"gpus": [1]}]
    code, text = _cli(capsys, "plan", str(_params(tmp_path, too_big)), "--total-mib", H200_MIB)
    assert code == 1 and text.index("does NOT fit") > text.index("GPU 1:")
    code, text = _cli(capsys, "run", str(_params(tmp_path, too_big)), "--dry-run", "--total-mib", H200_MIB)
    assert code != 0 and "do not fit on GPU 1, so nothing was started" in text and "Traceback" not in text


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5"])
def test_a_total_mib_that_is_not_a_positive_number_gives_one_clear_line(tmp_path, capsys, value):
    """Expectation: `plan --total-mib nan|inf|-inf|0|-5` and `run --dry-run --total-mib ...` exit 2 with one line
    that names the value and gives an example; no traceback, no plan."""
    params = str(_params(tmp_path, FOUR_SUMMING_TO_ONE))
    for argv in (["plan", params], ["run", params, "--dry-run"]):
        code, text = _cli(capsys, *argv, f"--total-mib={value}")
        assert code == 2, text
        assert text.strip().splitlines() == [f"servelab: --total-mib {float(value):g}: give the GPU's memory as a number of MiB above 0, e.g. --total-mib 81559"]


def test_run_dry_run_refuses_a_mix_that_does_not_fit_with_the_suggested_fractions(tmp_path, capsys):
    """Expectation: `run --dry-run --total-mib N` (the check a host without a GPU makes; a GPU host checks its
    device) exits 2 on the four-model mix, says nothing was started, and lists the suggested fraction of every
    deployment; a mix that fits prints its plan and exits 0."""
    code, text = _cli(capsys, "run", str(_params(tmp_path, FOUR_SUMMING_TO_ONE)), "--dry-run", "--total-mib", H200_MIB)
    assert code == 2
    assert "do not fit on the GPU, so nothing was started" in text
    assert sum(line.startswith("suggest ") for line in text.splitlines()) == 4
    code, text = _cli(capsys, "run", str(_params(tmp_path, [_vllm("a", 0.4), _vllm("b", 0.4)])), "--dry-run", "--total-mib", H200_MIB)
    assert code == 0 and "fits" in text


def test_run_refuses_a_mix_that_does_not_fit_before_any_folder_or_server(tmp_path, capsys):
    """Expectation: a real `servelab run --total-mib N` on the four-model mix exits 2 before it makes a run
    folder (and so before any server starts: vLLM is not even installed here, and is never reached)."""
    outputs = tmp_path / "outputs"
    code, text = _cli(capsys, "run", str(_params(tmp_path, FOUR_SUMMING_TO_ONE)), "--outputs", str(outputs), "--total-mib", H200_MIB)
    assert code == 2 and "nothing was started" in text
    assert not outputs.exists() or not any(outputs.iterdir())


SMOLLM2 = {"name": "smollm2", "model": "smollm2", "engine": {"kind": "llamacpp"}}


def test_a_missing_prompts_file_fails_validate_dry_run_and_run_before_anything_starts(tmp_path, capsys):
    """Expectation: sweep.prompts_file naming no file fails `validate`, `run --dry-run` and `run` with exit 2 and a
    line naming the file; `run` leaves no run folder behind."""
    params = str(_params(tmp_path, [SMOLLM2], prompts_file=str(tmp_path / "missing.json")))
    outputs = tmp_path / "outputs"
    for argv in (["validate", params], ["run", params, "--dry-run"], ["run", params, "--outputs", str(outputs)]):
        code, text = _cli(capsys, *argv)
        assert code == 2, argv
        assert f"sweep.prompts_file {tmp_path / 'missing.json'}: no such file" in text
    assert not outputs.exists()


def test_a_duplicate_yaml_key_is_refused_naming_the_key_and_its_lines(tmp_path, capsys):
    """Expectation: a params file that sets requests_per_point twice is refused (YAML would silently keep the
    last), and the message names the key and both lines."""
    path = tmp_path / "twice.yaml"
    path.write_text(
        "name: twice\ndeployments:\n  - {name: a, model: smollm2, engine: {kind: llamacpp}}\nsweep:\n"
        "  load: [{kind: concurrency, values: [1]}]\n  requests_per_point: 4\n  requests_per_point: 400\n"
    )
    for argv in (["validate", str(path)], ["run", str(path), "--dry-run"]):
        code, text = _cli(capsys, *argv)
        assert code == 2
        assert "key 'requests_per_point' appears twice in one mapping (lines 6 and 7)" in text


@pytest.mark.parametrize(
    ("sweep", "key"),
    [
        ({"load": [{"kind": "concurrency", "values": [True]}]}, "values"),
        ({"load": [{"kind": "poisson", "values": [True]}]}, "values"),
        ({"requests_per_point": True}, "requests_per_point"),
    ],
)
def test_true_is_not_a_number(tmp_path, capsys, sweep, key):
    """Expectation: `values: [true]` (and `requests_per_point: true`) is refused, not read as 1, naming the key."""
    code, text = _cli(capsys, "validate", str(_params(tmp_path, [SMOLLM2], **sweep)))
    assert code == 2
    assert f"{key}: " in text and "true/false where a number goes" in text


@pytest.mark.parametrize(
    "values",
    [[], [0], "abc"],
)
def test_a_bad_load_list_gets_no_misleading_second_line(tmp_path, capsys, values):
    """Expectation: a load whose values are empty, out of range or not a list gets one problem, about values;
    not a second line saying that sweep.load 'should have at least 1 item' (it has one)."""
    code, text = _cli(capsys, "validate", str(_params(tmp_path, [SMOLLM2], load=[{"kind": "concurrency", "values": values}])))
    assert code == 2
    assert "1 problem(s)" in text and "sweep.load[0].values = " in text
    assert "sweep.load =" not in text


@pytest.mark.parametrize("flags", [["--api-key", "abcdef123456"], ["--api-key=abcdef123456"], ["--hf-token", "abcdef123456"]])
def test_a_secret_flag_in_extra_args_is_refused_with_a_pointer_to_secret_env_without_echoing_it(tmp_path, capsys, flags):
    """Expectation: extra_args passing a key on the command line is refused (it would land in manifest.json and
    params.yaml); the message points to secret_env and never shows the key."""
    deployment = {**SMOLLM2, "engine": {"kind": "llamacpp", "extra_args": ["--threads", "2", *flags]}}
    code, text = _cli(capsys, "validate", str(_params(tmp_path, [deployment])))
    assert code == 2
    assert "secret_env" in text and "abcdef123456" not in text


def test_input_and_output_tokens_are_not_masked_as_secrets_in_an_error(tmp_path, capsys):
    """Expectation: an error message that shows the sweep block shows input_tokens and output_tokens as they are;
    only whole secret-ish names (HF_TOKEN, api_key) are masked, not every name that contains TOKEN."""
    code, text = _cli(capsys, "validate", str(_params(tmp_path, [SMOLLM2], input_tokens=48, output_tokens=7, requests_per_point=None)))
    assert code == 2
    assert "'input_tokens': 48" in text and "'output_tokens': 7" in text and "***" not in text
