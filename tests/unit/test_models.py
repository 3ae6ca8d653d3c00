"""Shape models: the published config numbers, parameter counts, the locally trained tokenizer (loads with
`tokenizers`, has exactly vocab_size ids, every id decodes), the folder cache, and custom shapes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from servelab.errors import ParamsError
from servelab.params import Deployment
from servelab.serve import models
from servelab.serve.deploy import _model_for
from servelab.serve.engines import adapter_for
from servelab.serve.models import SHAPES, is_shape_only, model_size_billion, prepare_shape, resolve_shape
from tokenizers import Tokenizer

TEXTS = {
    "en": "The quick brown fox jumps over the lazy dog; throughput is 4,420 tokens/s at concurrency 16.",
    "ko": "여러 모델이 그래픽 카드 하나를 함께 쓸 때 시작 순서가 중요합니다.",
    "zh": "当多个模型共用一块显卡时，启动顺序非常重要。",
    "ja": "複数のモデルが一枚のカードを共有します。",
    "es": "El orden de arranque importa cuando varios modelos comparten una tarjeta.",
    "odd": "emoji 🚀🔥, tabs\tand\r\nnewlines, combining e\u0301, NUL-free bytes \u00ff\u0100 <|im_start|>",
}

# Published config.json numbers of the seed's checkpoints.
SEED_CONFIGS: dict[str, dict[str, Any]] = {
    "tinyllama-1.1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22,
        "num_attention_heads": 32, "num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000,
        "rope_theta": 10000.0, "max_position_embeddings": 2048, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
    },
    "qwen2.5-3b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 2048, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "intermediate_size": 11008, "vocab_size": 151936,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "tie_word_embeddings": True,
    },
    "yi-6b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 4, "intermediate_size": 11008, "vocab_size": 64000,
        "rope_theta": 5000000.0, "max_position_embeddings": 4096, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
    },
}


def shape_deployment(shape: str, kind: str = "vllm", name: str = "d") -> Deployment:
    return Deployment.model_validate({"name": name, "model": "m", "shape": shape, "engine": {"kind": kind}})


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def qwen_folder(shapes_root: Path) -> Path:
    return prepare_shape(shape_deployment("qwen2.5-3b"), shapes_root)


# ----------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", sorted(SEED_CONFIGS))
def test_seed_shapes_carry_the_published_config_numbers(name: str) -> None:
    config = SHAPES[name].config
    for key, value in SEED_CONFIGS[name].items():
        assert config[key] == value, f"{name}.{key}"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_parameter_count_from_config_matches_the_published_size(name: str) -> None:
    shape = SHAPES[name]
    assert shape.published_params_billion is not None
    assert shape.parameter_count() / 1e9 == pytest.approx(shape.published_params_billion, rel=0.01)


def test_weight_bytes_match_what_vllm_logged_for_the_seed_models_on_the_h100() -> None:
    # shared/device/measured-h100-vllm.md: "weights 2.05 / 5.79 / 11.29 GiB"; vLLM's figure is the memory its
    # loader took, so it also holds small buffers (rotary cache): within 1 %.
    logged = {"tinyllama-1.1b": 2.05, "qwen2.5-3b": 5.79, "yi-6b": 11.29}
    for name, gib in logged.items():
        assert SHAPES[name].weight_bytes() / 2**30 == pytest.approx(gib, rel=0.01), name


def test_unknown_shape_name_lists_the_known_ones() -> None:
    with pytest.raises(ParamsError, match="tinyllama-1.1b.*config.json"):
        resolve_shape("gpt-5")


def test_is_shape_only_flags_dummy_weight_deployments() -> None:
    assert is_shape_only(shape_deployment("yi-6b"))
    plain = Deployment.model_validate({"name": "d", "model": "01-ai/Yi-6B-Chat", "engine": {"kind": "vllm"}})
    assert not is_shape_only(plain)


def test_an_engine_that_serves_no_shapes_refuses_one_before_anything_is_written(shapes_root: Path) -> None:
    """Deploy and compose ask the adapter before they prepare a shape's folder."""
    deployment = shape_deployment("yi-6b", kind="ollama")
    with pytest.raises(ParamsError, match="ollama cannot serve shape"):
        adapter_for(deployment).check_shape(deployment)
    with pytest.raises(ParamsError, match="ollama cannot serve shape"):
        _model_for(adapter_for(deployment), deployment, shapes_root / "run")
    assert not (shapes_root / ".shapes").exists(), "refused before any folder is written"


@pytest.mark.parametrize(
    ("model", "billions"),
    [("tinyllama:1.1b", 1.1), ("qwen2.5:3b", 3.0), ("yi:6b", 6.0), ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1.1),
     ("Qwen/Qwen2.5-3B-Instruct", 3.0), ("01-ai/Yi-6B-Chat", 6.0), ("llama3.1:8b", 8.0), ("smollm2", None)],
)
def test_model_size_is_read_from_the_model_name(model: str, billions: float | None) -> None:
    d = Deployment.model_validate({"name": "d", "model": model, "engine": {"kind": "ollama"}})
    assert model_size_billion(d) == billions


def test_model_size_of_a_shape_is_its_parameter_count() -> None:
    assert model_size_billion(shape_deployment("qwen2.5-3b")) == pytest.approx(3.086, abs=0.01)


# ----------------------------------------------------------------------------------------------- folder
def test_folder_has_config_tokenizer_and_no_weights(qwen_folder: Path) -> None:
    names = {p.name for p in qwen_folder.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert not [n for n in names if n.endswith((".safetensors", ".bin", ".pt", ".gguf"))]
    config = json.loads((qwen_folder / "config.json").read_text())
    for key, value in SEED_CONFIGS["qwen2.5-3b"].items():
        assert config[key] == value
    assert config["transformers_version"] == models.CONFIG_TRANSFORMERS_VERSION


def test_tokenizer_loads_with_tokenizers_and_has_exactly_vocab_size_ids(qwen_folder: Path) -> None:
    tokenizer = Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 151936
    assert sorted(tokenizer.get_vocab().values()) == list(range(151936))


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_every_encoded_id_fits_the_model_vocabulary(qwen_folder: Path, language: str) -> None:
    tokenizer = Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    ids = tokenizer.encode(TEXTS[language]).ids
    assert ids and max(ids) < 151936
    assert tokenizer.decode(ids) == TEXTS[language].replace("e\u0301", "\u00e9").replace("<|im_start|>", "")


def test_any_id_the_random_model_samples_decodes_to_visible_text(qwen_folder: Path) -> None:
    tokenizer = Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    sampled = random.Random(0).sample(range(3, 151936), 200) + [151935]
    for token_id in sampled:
        assert tokenizer.decode([token_id]) != ""


def test_padding_is_added_and_not_special_so_prompts_skip_it_and_outputs_show_it(qwen_folder: Path) -> None:
    tokenizer = Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    trained = tokenizer.get_vocab_size(with_added_tokens=False)
    assert 1000 < trained < 32000
    added = tokenizer.get_added_tokens_decoder()
    for token_id in range(trained, 151936):
        assert added[token_id].content == f"<pad{token_id}>" and not added[token_id].special
    assert tokenizer.decode([151935], skip_special_tokens=True) == "<pad151935>"


def test_special_tokens_and_config_token_ids_agree(qwen_folder: Path) -> None:
    tokenizer = Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    config = json.loads((qwen_folder / "config.json").read_text())
    tokenizer_config = json.loads((qwen_folder / "tokenizer_config.json").read_text())
    assert tokenizer.token_to_id(tokenizer_config["eos_token"]) == config["eos_token_id"]
    assert tokenizer.token_to_id(tokenizer_config["bos_token"]) == config["bos_token_id"]
    assert tokenizer.encode("<|im_start|>user").ids[0] == tokenizer.token_to_id("<|im_start|>")
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_chat_template_renders_a_conversation(qwen_folder: Path) -> None:
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 renders the template here; transformers does on the GPU host")
    template = json.loads((qwen_folder / "tokenizer_config.json").read_text())["chat_template"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "안녕"}]
    text = jinja2.Template(template).render(messages=messages, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n안녕<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_vocabulary_is_padded_to_each_shapes_own_size(shapes_root: Path) -> None:
    folder = prepare_shape(shape_deployment("tinyllama-1.1b"), shapes_root)
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size() == 32000


def test_training_is_deterministic() -> None:
    corpus = models._template_text("shape_corpus.txt")
    train = models._trained_tokenizer.__wrapped__
    assert train(corpus, 32000) == train(corpus, 32000)


def test_folder_is_cached_by_shape_name_and_rebuilt_when_stale(shapes_root: Path, qwen_folder: Path) -> None:
    stamp = (qwen_folder / "tokenizer.json").stat().st_mtime_ns
    assert prepare_shape(shape_deployment("qwen2.5-3b", kind="sglang", name="other"), shapes_root) == qwen_folder
    assert (qwen_folder / "tokenizer.json").stat().st_mtime_ns == stamp
    (qwen_folder / models.FINGERPRINT_FILE).write_text('{"fingerprint": "old"}')
    os.remove(qwen_folder / "config.json")
    assert prepare_shape(shape_deployment("qwen2.5-3b"), shapes_root) == qwen_folder
    assert (qwen_folder / "config.json").is_file()
    assert not [p for p in shapes_root.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------- custom shapes
def test_custom_shape_from_a_config_json(tmp_path: Path) -> None:
    config = dict(SEED_CONFIGS["yi-6b"]) | {"num_hidden_layers": 4, "vocab_size": 8000, "transformers_version": "4.0"}
    path = tmp_path / "tiny-yi.json"
    path.write_text(json.dumps(config))
    deployment = shape_deployment(str(path))
    folder = prepare_shape(deployment, tmp_path / "shapes")
    assert folder.name.startswith("tiny-yi-")
    written = json.loads((folder / "config.json").read_text())
    assert written["num_hidden_layers"] == 4 and written["transformers_version"] == "4.0"
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size() == 8000


def test_custom_shape_missing_numbers_is_refused_with_their_names(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    with pytest.raises(ParamsError, match="lacks model_type, intermediate_size"):
        resolve_shape(str(path))


def test_custom_shape_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="no such file"):
        resolve_shape(str(tmp_path / "missing.json"))


# ------------------------------------------------------------------------------------ prompts in its tokens
@pytest.mark.parametrize("language", ["en", "ko", "zh"])
def test_sweep_prompts_hit_the_target_in_the_shape_tokenizer(qwen_folder: Path, language: str) -> None:
    """The GPU run of 2026-12-01 sent ~520 (en) and ~630 (zh) tokens for a 256-token target: the prompts had been
    sized by a characters-per-token estimate. With the model folder's tokenizer they are sized in its tokens."""
    from servelab.measure.prompts import compose_prompts, random_prompts
    from servelab.measure.tokens import local_tokenizer

    tokenizer = local_tokenizer(str(qwen_folder))
    assert tokenizer is not None
    prompts = compose_prompts(language, 12, 256, seed=3, tokenizer=tokenizer)
    counts = [tokenizer.count(p.text) for p in prompts]
    assert counts == [p.token_count for p in prompts]
    assert all(254 <= n <= 256 for n in counts), counts
    randoms = random_prompts(6, 256, seed=3, tokenizer=tokenizer)
    assert all(254 <= tokenizer.count(p.text) <= 256 for p in randoms)
    assert local_tokenizer(str(qwen_folder / "no-such-folder")) is None and local_tokenizer(None) is None
