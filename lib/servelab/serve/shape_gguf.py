"""A shape model as one GGUF file, for llama.cpp: the shape's config numbers, its tokenizer, and generated weights.

llama.cpp has no `--load-format dummy`, so the weights are written out: f16, random small values (seeded), norms
of ones. Like the HF-style folder of servelab.serve.models, the file measures the architecture's speed and
memory, never answers. The tokenizer is the shape tokenizer (`models.build_tokenizer`) as a GPT-2-style BPE with
Qwen2's split, the one llama.cpp calls 'qwen2', so a prompt becomes the same ids in llama-server as in the client.
llama.cpp applies no NFC normalization, which the shape tokenizer does: text already in NFC (all servelab's
prompts) tokenizes the same. Rope scaling (Llama 3's) is not written: it changes no tensor's size or speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from servelab.errors import ParamsError
from servelab.serve.models import (
    BOS_TOKEN,
    CHAT_END_TOKEN,
    Shape,
    _fingerprint,
    _template_text,
    build_tokenizer,
)

GGUF_RECIPE_VERSION = 1
"""Bump when the file's contents change for the same shape; cached files are then rewritten."""
WEIGHT_SEED = 11
ARCHITECTURES = ("llama", "qwen2")
"""The config `model_type`s written: both are llama's block (Qwen2 adds q/k/v biases)."""
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4
"""gguf's TokenType values: ordinary BPE tokens, special tokens, added (padding) tokens."""
CHUNK_VALUES = 1 << 24


def gguf_name(shape: Shape) -> str:
    return f"{shape.name}-f16.gguf"


def tokenizer_beside(path: Path) -> Path:
    """Where the shape tokenizer's tokenizer.json is written beside a GGUF, for the client to cut prompts with
    (servelab.measure.tokens.local_tokenizer), as it does from a shape folder."""
    return path.with_name(f"{path.stem}.tokenizer.json")


def tensor_shapes(shape: Shape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(GGUF tensor name, numpy shape) in file order; numpy's shape is GGUF's reversed (rows = output features)."""
    config = shape.config
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    intermediate = int(config["intermediate_size"])
    vocab = shape.vocab_size
    biases = config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False))
    yield "token_embd.weight", (vocab, hidden)
    for layer in range(int(config["num_hidden_layers"])):
        block = f"blk.{layer}"
        yield f"{block}.attn_norm.weight", (hidden,)
        yield f"{block}.attn_q.weight", (heads * head_dim, hidden)
        yield f"{block}.attn_k.weight", (kv_heads * head_dim, hidden)
        yield f"{block}.attn_v.weight", (kv_heads * head_dim, hidden)
        if biases:
            yield f"{block}.attn_q.bias", (heads * head_dim,)
            yield f"{block}.attn_k.bias", (kv_heads * head_dim,)
            yield f"{block}.attn_v.bias", (kv_heads * head_dim,)
        yield f"{block}.attn_output.weight", (hidden, heads * head_dim)
        yield f"{block}.ffn_norm.weight", (hidden,)
        yield f"{block}.ffn_gate.weight", (intermediate, hidden)
        yield f"{block}.ffn_up.weight", (intermediate, hidden)
        yield f"{block}.ffn_down.weight", (hidden, intermediate)
    yield "output_norm.weight", (hidden,)
    if not config.get("tie_word_embeddings", False):
        yield "output.weight", (vocab, hidden)


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def generated_tensor(name: str, dims: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Norms: f32 ones. Everything else: f16 of magnitude 2^-7 to 2^-6 and random sign.

    The values are random f16 bit patterns with the exponent fixed (sign and mantissa drawn): drawing 16-bit
    integers is ~15x faster than drawing floats, so 1.1 B weights take seconds, written chunk by chunk."""
    if _is_norm(name):
        return np.ones(dims, dtype=np.float32)
    out = np.empty(int(np.prod(dims)), dtype=np.uint16)
    for start in range(0, out.size, CHUNK_VALUES):
        chunk = rng.integers(0, 1 << 16, min(CHUNK_VALUES, out.size - start), dtype=np.uint16)
        chunk &= 0x83FF  # sign and mantissa
        chunk |= 8 << 10  # exponent 8 - 15 = -7
        out[start:start + chunk.size] = chunk
    return out.view(np.float16).reshape(dims)


def tokenizer_fields(shape: Shape) -> dict[str, Any]:
    """The shape tokenizer as GGUF's tokenizer.ggml.* values: tokens by id, their types, merges, special ids."""
    tokenizer = build_tokenizer(shape.vocab_size)
    data = json.loads(tokenizer.to_str())
    by_id: dict[int, tuple[str, int]] = {index: (text, TOKEN_NORMAL) for text, index in data["model"]["vocab"].items()}
    for added in data["added_tokens"]:
        by_id[int(added["id"])] = (added["content"], TOKEN_CONTROL if added["special"] else TOKEN_USER_DEFINED)
    missing = [index for index in range(shape.vocab_size) if index not in by_id]
    if missing:
        raise ParamsError(f"shape {shape.name}: the shape tokenizer has no token for ids {missing[:5]}...; rebuild the shape")
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"]["merges"]]
    return {
        "tokens": [by_id[index][0] for index in range(shape.vocab_size)],
        "types": [by_id[index][1] for index in range(shape.vocab_size)],
        "merges": merges,
        "bos_id": tokenizer.token_to_id(BOS_TOKEN),
        "eos_id": tokenizer.token_to_id(CHAT_END_TOKEN),
    }


def _write(shape: Shape, path: Path, seed: int) -> None:
    import gguf  # the optional `gguf` extra; only llama.cpp's shapes need it

    config = shape.config
    architecture = str(config["model_type"])
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name(f"{shape.name} (servelab shape, generated weights)")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(shape.vocab_size)
    fields = tokenizer_fields(shape)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    writer.add_bos_token_id(fields["bos_id"])
    writer.add_eos_token_id(fields["eos_id"])
    writer.add_pad_token_id(fields["bos_id"])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(_template_text("shape_chat_template.jinja"))
    layout = list(tensor_shapes(shape))
    for name, dims in layout:
        dtype = np.float32 if _is_norm(name) else np.float16
        writer.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, dims in layout:
        writer.write_tensor_data(generated_tensor(name, dims, rng))
    writer.close()


def _gguf_fingerprint(shape: Shape, seed: int) -> str:
    recipe = {"shape": _fingerprint(shape), "gguf_recipe": GGUF_RECIPE_VERSION, "seed": seed}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def write_shape_gguf(shape: Shape, root: Path, seed: int = WEIGHT_SEED) -> Path:
    """Write `root/<shape>-f16.gguf` unless an identical one is there (a `.json` beside it records the recipe, and
    `.tokenizer.json` holds the shape tokenizer); returns the file's path. About 2 bytes per parameter: 2.1 GiB for
    TinyLlama-1.1B."""
    if shape.config.get("model_type") not in ARCHITECTURES:
        raise ParamsError(
            f"shape {shape.name}: llama.cpp shapes are written for model_type {' or '.join(ARCHITECTURES)}, "
            f"not {shape.config.get('model_type')!r}; pick a Llama or Qwen2 shape"
        )
    root = Path(root)
    path = root / gguf_name(shape)
    marker = path.with_suffix(".json")
    fingerprint = _gguf_fingerprint(shape, seed)
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        if recorded == fingerprint and path.is_file() and tokenizer_beside(path).is_file():
            return path
    except (OSError, ValueError, AttributeError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{shape.name}-", suffix=".gguf", dir=root)
    os.close(handle)
    try:
        _write(shape, Path(staging), seed)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    tokenizer_beside(path).write_text(build_tokenizer(shape.vocab_size).to_str(), encoding="utf-8")
    record = {"shape": shape.name, "source": shape.source, "seed": seed, "fingerprint": fingerprint}
    marker.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
