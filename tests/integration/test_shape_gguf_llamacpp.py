"""A shape served by the real llama-server (the CPU build): a tiny Llama shape written as a GGUF of generated
weights through the adapter's `shape_model`, deployed natively, answering completions, and tokenizing text as
the shape tokenizer does. The answers are noise by design; what is pinned is that llama.cpp loads the file and
that a prompt becomes the same ids on both sides."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servelab.params import parse_params
from servelab.serve.deploy import RunningServer, deploy
from servelab.serve.models import build_tokenizer

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "vocab_size": 2048, "tie_word_embeddings": False,
}
TEXTS = {
    "en": "The quick brown fox jumps over the lazy dog; throughput is 4,420 tokens/s at concurrency 16.",
    "ko": "여러 모델이 그래픽 카드 하나를 함께 쓸 때 시작 순서가 중요합니다.",
    "zh": "当多个模型共用一块显卡时，启动顺序非常重要。",
}


@pytest.fixture(scope="module")
def generated_weights_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("shape-gguf")
    config = root / "tiny-llama.json"
    config.write_text(json.dumps(TINY_LLAMA), encoding="utf-8")
    params = parse_params({
        "name": "shape-gguf",
        "deployments": [{
            "name": "tiny", "model": "tiny-llama", "shape": str(config), "startup_timeout_s": 120,
            "engine": {"kind": "llamacpp", "parallel_slots": 2, "ctx_size": 1024},
        }],
        "sweep": {"load": [{"kind": "concurrency", "values": [1]}], "requests_per_point": 1},
    }, "<test>")
    fleet = deploy(params, root / "run")
    try:
        yield fleet["tiny"]
    finally:
        fleet.close()


def test_llamacpp_serves_a_shape_gguf_of_generated_weights(generated_weights_server: RunningServer, tmp_path_factory) -> None:
    response = httpx.post(
        generated_weights_server.base_url + "/v1/completions",
        json={"model": generated_weights_server.served_model, "prompt": TEXTS["en"], "max_tokens": 8, "ignore_eos": True},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 8
    written = sorted(Path(tmp_path_factory.getbasetemp()).rglob("tiny-llama-*-f16.gguf"))
    assert written, "the GGUF is written into the shapes cache beside the run"


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_llamacpp_tokenizes_as_the_shape_tokenizer(generated_weights_server: RunningServer, language: str) -> None:
    text = TEXTS[language]
    response = httpx.post(generated_weights_server.base_url + "/tokenize", json={"content": text, "add_special": False}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["tokens"] == build_tokenizer(TINY_LLAMA["vocab_size"]).encode(text).ids
