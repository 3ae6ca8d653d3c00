"""Params files are validated before anything starts, and errors name file, key path, bad value and what is allowed."""

from pathlib import Path

import pytest
from servelab.errors import ParamsError
from servelab.params import load_params

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_demo_params_are_the_embedded_engine_three_languages_and_concurrency_1_2_4():
    params = load_params(REPO / "params" / "demo.yaml")
    assert [d.engine.kind for d in params.deployments] == ["llamacpp"]
    assert params.sweep.languages == ("en", "ko", "zh")
    assert params.sweep.load[0].values == (1, 2, 4)


DEMO = (REPO / "params" / "demo.yaml").read_text()


def test_an_unknown_key_names_the_file_and_the_key_path(tmp_path):
    path = _write(tmp_path, DEMO.replace("ignore_eos: true", "ignore_eos: true\n  ignore_eso: true"))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert str(path) in message
    assert "sweep.ignore_eso" in message
    assert "unknown key" in message


def test_a_bad_value_names_the_key_path_the_value_and_what_is_allowed(tmp_path):
    path = _write(tmp_path, DEMO.replace("parallel_slots: 4", "parallel_slots: 0"))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "deployments[0].engine.parallel_slots" in message
    assert "= 0" in message
    assert "greater than or equal to 1" in message


def test_an_unknown_engine_kind_lists_the_known_ones(tmp_path):
    path = _write(tmp_path, DEMO.replace("kind: llamacpp", "kind: tgi"))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "'tgi'" in message
    for kind in ("llamacpp", "vllm", "sglang", "ollama"):
        assert kind in message


def test_an_unknown_language_is_refused_with_the_allowed_list(tmp_path):
    path = _write(tmp_path, DEMO.replace("[en, ko, zh]", "[en, klingon]"))
    with pytest.raises(ParamsError, match="klingon.*en, ko, zh"):
        load_params(path)


def test_a_secret_written_into_env_is_refused(tmp_path):
    path = _write(tmp_path, DEMO.replace("startup_timeout_s: 120", "startup_timeout_s: 120\n    env: {HF_TOKEN: abc}"))
    with pytest.raises(ParamsError, match="secret_env"):
        load_params(path)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="mapping"):
        load_params(_write(tmp_path, "- a\n- b\n"))


def test_a_missing_file_says_where_to_look(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


def test_params_readme_reference_is_what_the_schema_generates_now():
    from servelab.schema_doc import BEGIN, reference

    text = (REPO / "params" / "README.md").read_text()
    assert BEGIN in text
    assert text.split(BEGIN)[1] == reference().split(BEGIN)[1], "run `servelab schema --write params/README.md`"


def test_every_committed_params_file_validates():
    for path in sorted((REPO / "params").glob("*.yaml")):
        load_params(path)


@pytest.mark.parametrize(("written", "held"), [("all", "all"), ("0", 0), ("22", 22)])
def test_llamacpp_gpu_layers_take_a_count_or_all(tmp_path, written, held):
    path = _write(tmp_path, DEMO.replace("kind: llamacpp", f"kind: llamacpp\n      gpu_layers: {written}"))
    engine = load_params(path).deployments[0].engine
    assert engine.gpu_layers == held
    assert engine.on_gpu() is (held != 0)


@pytest.mark.parametrize("written", ["-1", "auto"])
def test_llamacpp_gpu_layers_refuse_what_servelab_cannot_plan_for(tmp_path, written):
    path = _write(tmp_path, DEMO.replace("kind: llamacpp", f"kind: llamacpp\n      gpu_layers: {written}"))
    with pytest.raises(ParamsError, match="gpu_layers"):
        load_params(path)
