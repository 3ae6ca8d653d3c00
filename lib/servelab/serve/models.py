"""Shape models: a checkpoint's real config.json plus a locally trained tokenizer, served with dummy weights.

A GPU host without model weights can still measure memory, throughput and latency of a real architecture:
vLLM and SGLang load random weights of the right shapes (`--load-format dummy`). The folder holds the
published architecture numbers and a byte-level BPE tokenizer trained on `templates/shape_corpus.txt`, its
vocabulary padded with added tokens to the config's `vocab_size`, so every id the model can emit decodes to
text. Results from such a folder measure the shape, not the model's answers: `is_shape_only` flags them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers

from servelab.errors import ParamsError
from servelab.params import Deployment

RECIPE_VERSION = 3
"""Bump when the folder's contents change for the same shape; cached folders are then rebuilt."""

BOS_TOKEN, CHAT_START_TOKEN, CHAT_END_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (BOS_TOKEN, CHAT_START_TOKEN, CHAT_END_TOKEN)
TRAINED_VOCAB_LIMIT = 32_000
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen2's split: transformers 5 rebuilds a qwen2 tokenizer with it (and NFC), so every shape uses it too."""
FINGERPRINT_FILE = ".servelab-shape.json"
CONFIG_TRANSFORMERS_VERSION = "4.43.1"
"""Written into config.json as published checkpoints do (legacy rope_theta format). Without it transformers
5.0 to 5.22 take a local folder for a Mistral one and warn of an "incorrect regex pattern"."""
REQUIRED_CONFIG_KEYS = (
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
)


@dataclass(frozen=True)
class Shape:
    """One architecture: the checkpoint it copies and its config.json numbers (token ids are the tokenizer's)."""

    name: str
    source: str
    config: Mapping[str, Any]
    published_params_billion: float | None = None
    notes: str = field(default="", compare=False)

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    def parameter_count(self) -> int:
        """Weights of a decoder-only transformer with gated MLP, counted from the config (no buffers)."""
        return parameter_count(self.config)

    def weight_bytes(self, bytes_per_parameter: int = 2) -> int:
        """Bytes the weights take in a 16-bit dtype unless told otherwise."""
        return self.parameter_count() * bytes_per_parameter


def parameter_count(config: Mapping[str, Any]) -> int:
    """Embedding + layers (attention, gated MLP, two RMSNorms) + final norm + untied LM head, from config numbers."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    intermediate = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    layers = int(config["num_hidden_layers"])
    qkv_bias = bool(config.get("attention_bias", config.get("model_type") == "qwen2"))
    mlp_bias = bool(config.get("mlp_bias", False))
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    if qkv_bias:
        attention += heads * head_dim + 2 * kv_heads * head_dim
    mlp = 3 * hidden * intermediate + (2 * intermediate + hidden if mlp_bias else 0)
    per_layer = attention + mlp + 2 * hidden
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return embeddings + layers * per_layer + hidden


def _llama(**numbers: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    return base | numbers


def _qwen2(**numbers: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }
    return base | numbers


def _llama3_rope(factor: float) -> dict[str, Any]:
    return {
        "factor": factor,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }


def _check_config(config: Mapping[str, Any], where: str) -> None:
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise ParamsError(
            f"shape {where}: config lacks {', '.join(missing)}; copy them from the checkpoint's config.json"
        )
    if int(config["vocab_size"]) <= len(SPECIAL_TOKENS) + 256:
        raise ParamsError(f"shape {where}: vocab_size {config['vocab_size']} is too small for a byte-level tokenizer")


SHAPES: dict[str, Shape] = {}


def register_shape(shape: Shape) -> Shape:
    """Make `shape` available by name to `Deployment.shape`."""
    _check_config(shape.config, shape.name)
    SHAPES[shape.name] = shape
    return shape


for _shape in (
    Shape("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", _llama(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=2048, rope_theta=10000.0, vocab_size=32000,
    ), 1.10),
    Shape("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", _qwen2(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_window_layers=21, tie_word_embeddings=True,
    ), 0.49),
    Shape("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", _qwen2(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_window_layers=21, tie_word_embeddings=True,
    ), 1.54),
    Shape("qwen2.5-3b", "Qwen/Qwen2.5-3B-Instruct", _qwen2(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, max_window_layers=70, tie_word_embeddings=True,
    ), 3.09),
    Shape("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", _qwen2(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_window_layers=28, tie_word_embeddings=False, vocab_size=152064,
    ), 7.62),
    Shape("yi-6b", "01-ai/Yi-6B-Chat", _llama(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=4096, rope_theta=5000000.0, vocab_size=64000,
    ), 6.06),
    Shape("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", _llama(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling=_llama3_rope(32.0), tie_word_embeddings=True, vocab_size=128256,
    ), 1.24),
    Shape("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", _llama(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling=_llama3_rope(8.0), vocab_size=128256,
    ), 8.03),
):
    register_shape(_shape)


def custom_shape(config_path: str | Path) -> Shape:
    """A shape from a checkpoint's config.json (or any JSON with its numbers); named `<stem>-<hash>`."""
    path = Path(config_path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"shape {str(path)!r}: no such file; give a shape name ({', '.join(SHAPES)}) or a config.json path") from None
    except (OSError, ValueError) as error:
        raise ParamsError(f"shape {str(path)!r}: cannot read it as JSON ({error})") from None
    if not isinstance(config, dict):
        raise ParamsError(f"shape {str(path)!r}: the JSON must be an object of config keys")
    _check_config(config, repr(str(path)))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9_.-]+", "-", path.stem.lower()).strip("-") or "shape"
    return Shape(f"{stem}-{digest}", f"custom:{path}", config)


def resolve_shape(spec: str) -> Shape:
    """The registered shape called `spec`, or a custom one read from `spec` when it is a .json path."""
    if spec in SHAPES:
        return SHAPES[spec]
    if spec.endswith(".json"):
        return custom_shape(spec)
    raise ParamsError(
        f"shape {spec!r} is unknown; use one of {', '.join(SHAPES)} or the path of a config.json (ending in .json)"
    )


def is_shape_only(deployment: Deployment) -> bool:
    """True when the deployment serves random weights: its outputs measure speed and memory, not answers."""
    return deployment.shape is not None


def shape_of(deployment: Deployment) -> Shape:
    """The shape a deployment names; whether its engine can serve one is its adapter's `check_shape`."""
    if deployment.shape is None:
        raise ParamsError(f"deployment {deployment.name!r} has no shape; set deployments[].shape")
    return resolve_shape(deployment.shape)


_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z0-9])")


def model_size_billion(deployment: Deployment) -> float | None:
    """Parameters in billions: the shape's count, else a size written in the model name ('qwen2.5:3b' -> 3)."""
    if deployment.shape is not None:
        return shape_of(deployment).parameter_count() / 1e9
    found = _SIZE_IN_NAME.findall(deployment.model.rsplit("/", 1)[-1])
    return float(found[-1]) if found else None


# ----------------------------------------------------------------------------------------------- folder
def _template_text(name: str) -> str:
    return resources.files("servelab").joinpath("templates", name).read_text(encoding="utf-8")


@lru_cache(maxsize=2)
def _trained_tokenizer(corpus: str, vocab_limit: int) -> str:
    """Byte-level BPE trained on `corpus`, special tokens first (ids 0, 1, 2); the tokenizer.json text.

    The pipeline (NFC, Qwen2's split regex, byte-level) is the one transformers 5 imposes on qwen2 models, so
    `tokenizers`, `TokenizersBackend` and `Qwen2Tokenizer` all give the same ids for the same text.
    """
    tokenizer = Tokenizer(tokenizers.models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_limit,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return tokenizer.to_str()


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """The shape tokenizer with exactly `vocab_size` ids.

    The trained vocabulary is padded with added tokens `<padN>` so that every id the random-weight model
    samples exists. They are added (not in the BPE vocabulary), so code that draws prompt ids from the
    ordinary vocabulary skips them, and not special, so they decode to visible text and every streamed
    token carries some.
    """
    tokenizer = Tokenizer.from_str(_trained_tokenizer(_template_text("shape_corpus.txt"), min(vocab_size, TRAINED_VOCAB_LIMIT)))
    trained = tokenizer.get_vocab_size()
    if trained > vocab_size:
        raise ParamsError(f"vocab_size {vocab_size} is smaller than the {trained} tokens the shape tokenizer needs")
    tokenizer.add_tokens([AddedToken(f"<pad{i}>", special=False, normalized=False) for i in range(trained, vocab_size)])
    return tokenizer


def shape_files(shape: Shape) -> dict[str, str]:
    """File name -> text of the folder that serves `shape` (no weights)."""
    tokenizer = build_tokenizer(shape.vocab_size)
    bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(CHAT_END_TOKEN)
    config = dict(shape.config) | {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": bos_id}
    config.setdefault("transformers_version", CONFIG_TRANSFORMERS_VERSION)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": CHAT_END_TOKEN,
        "pad_token": BOS_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(shape.config["max_position_embeddings"]),
        "chat_template": _template_text("shape_chat_template.jinja"),
    }
    generation_config = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": bos_id}
    return {
        "config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
        "tokenizer.json": tokenizer.to_str(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n",
        "generation_config.json": json.dumps(generation_config, indent=2) + "\n",
        "README.md": (
            f"# Shape model {shape.name}\n\nThe architecture of {shape.source} (config.json) with a tokenizer trained\n"
            "by servelab. There are no weights: serve it with --load-format dummy. Its answers are noise;\n"
            "its memory, throughput and latency are those of the architecture.\n"
        ),
    }


def _fingerprint(shape: Shape) -> str:
    recipe = {
        "recipe": RECIPE_VERSION,
        "config": shape.config,
        "tokenizers": tokenizers.__version__,
        "corpus": hashlib.sha256(_template_text("shape_corpus.txt").encode()).hexdigest(),
        "chat_template": _template_text("shape_chat_template.jinja"),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def _is_current(folder: Path, fingerprint: str) -> bool:
    try:
        recorded = json.loads((folder / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("fingerprint") == fingerprint


def write_shape(shape: Shape, root: Path) -> Path:
    """Write `root/<shape name>/` unless an identical one is there; returns the folder."""
    folder = Path(root) / shape.name
    fingerprint = _fingerprint(shape)
    if _is_current(folder, fingerprint):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{shape.name}-", dir=folder.parent))
    try:
        for name, text in shape_files(shape).items():
            (staging / name).write_text(text, encoding="utf-8")
        marker = {"shape": shape.name, "source": shape.source, "fingerprint": fingerprint}
        (staging / FINGERPRINT_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.rename(staging, folder)
        except OSError:
            if not _is_current(folder, fingerprint):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def prepare_shape(deployment: Deployment, root: Path) -> Path:
    """The folder (cached under `root` by shape name) that vLLM or SGLang loads for a shape deployment."""
    return write_shape(shape_of(deployment), root)
