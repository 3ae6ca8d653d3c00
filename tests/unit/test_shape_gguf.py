"""A shape as a GGUF of generated weights: llama metadata from the config, every tensor of the architecture at f16
(norms f32), the shape tokenizer embedded as llama.cpp's 'gpt2' BPE with the 'qwen2' split, the file cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servelab.errors import ParamsError
from servelab.serve.models import Shape, _llama, _qwen2, build_tokenizer
from servelab.serve.shape_gguf import write_shape_gguf

gguf = pytest.importorskip("gguf", reason="the gguf extra: pip install -e '.[gguf]'")

TINY = Shape("tiny-llama", "servelab/test", _llama(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, rope_theta=10000.0, vocab_size=2048,
))


def read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    return fields, tensors


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shape_gguf(TINY, tmp_path_factory.mktemp("gguf"))


def test_the_metadata_is_the_shapes_config(tiny_gguf: Path) -> None:
    fields, _ = read(tiny_gguf)
    assert fields["general.architecture"] == "llama"
    assert (fields["llama.embedding_length"], fields["llama.block_count"], fields["llama.feed_forward_length"]) == (64, 2, 128)
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (4, 2)
    assert (fields["llama.context_length"], fields["llama.rope.dimension_count"]) == (1024, 16)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16


def test_every_weight_is_there_at_f16_and_the_count_is_the_shapes(tiny_gguf: Path) -> None:
    _, tensors = read(tiny_gguf)
    assert len(tensors) == 1 + 2 * 9 + 2
    assert sum(int(t.n_elements) for t in tensors.values()) == TINY.parameter_count()
    assert list(tensors["token_embd.weight"].shape) == [64, 2048]  # GGUF order: columns first
    assert tensors["blk.1.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    weights = np.abs(np.asarray(tensors["blk.0.attn_q.weight"].data, dtype=np.float32))
    assert weights.min() >= 2**-7 and weights.max() < 2**-6, "small values, none zero"


def test_the_tokenizer_is_the_shape_tokenizer(tiny_gguf: Path) -> None:
    fields, _ = read(tiny_gguf)
    tokenizer = build_tokenizer(2048)
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "qwen2")
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 2048 and all(tokens[i] == tokenizer.id_to_token(i) for i in range(2048))
    types = fields["tokenizer.ggml.token_type"]
    assert types[:3] == [3, 3, 3] and types[300] == 1 and types[-1] == 4  # special, BPE, padding
    assert fields["tokenizer.ggml.bos_token_id"] == 0 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in fields["tokenizer.chat_template"]


def test_the_client_cuts_prompts_with_the_shape_tokenizer_written_beside_the_file(tiny_gguf: Path) -> None:
    from servelab.measure.tokens import local_tokenizer

    tokenizer = local_tokenizer(str(tiny_gguf))
    assert tokenizer is not None
    text = "여러 모델이 그래픽 카드 하나를 함께 쓸 때"
    assert tokenizer.tokenizer.encode(text).ids == build_tokenizer(2048).encode(text).ids


def test_a_written_file_is_reused_and_a_new_seed_rewrites_it(tiny_gguf: Path) -> None:
    stamp = tiny_gguf.stat().st_mtime_ns
    assert write_shape_gguf(TINY, tiny_gguf.parent) == tiny_gguf
    assert tiny_gguf.stat().st_mtime_ns == stamp
    write_shape_gguf(TINY, tiny_gguf.parent, seed=12)
    assert tiny_gguf.stat().st_mtime_ns != stamp


def test_a_qwen2_shape_has_qkv_biases_and_ties_its_embeddings(tmp_path: Path) -> None:
    shape = Shape("tiny-qwen", "servelab/test", _qwen2(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True, vocab_size=1024,
    ))
    fields, tensors = read(write_shape_gguf(shape, tmp_path))
    assert fields["general.architecture"] == "qwen2"
    assert "blk.0.attn_q.bias" in tensors and "output.weight" not in tensors
    assert sum(int(t.n_elements) for t in tensors.values()) == shape.parameter_count()


def test_an_architecture_llamacpp_is_not_written_for_is_refused(tmp_path: Path) -> None:
    shape = Shape("tiny-gemma", "servelab/test", _llama(model_type="gemma", hidden_size=64, intermediate_size=128,
                  num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=512, vocab_size=1024))
    with pytest.raises(ParamsError, match="'gemma'.*Llama or Qwen2"):
        write_shape_gguf(shape, tmp_path)
