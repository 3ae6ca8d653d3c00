"""What to send: shipped multilingual passages composed to a target length, random-token prompts, or a local
ShareGPT file. Everything is seeded (`random.Random`), so the same seed gives the same prompts.

Lengths are counted with the model's own tokenizer when one is given (`tokenizer`: the tokenizer.json in the
model's folder, or the server's /tokenize; the sweep picks), or with any `count_tokens` callable, else estimated
from a per-language characters-per-token ratio. The estimate can be far off for a tokenizer unlike the large
multilingual ones it was taken from: it made SmolLM2's Korean prompts three times their target. Counts are of
the prompt text alone: the server adds its BOS token and, for chat, its template.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from servelab.errors import ParamsError
from servelab.measure.tokens import JsonTokenizer
from servelab.params import LANGUAGES

if TYPE_CHECKING:
    from servelab.params import Sweep

CountTokens = Callable[[str], int]


class PromptTokenizer(Protocol):
    """What cuts prompts to length: a model's tokenizer.json (`JsonTokenizer`) or the server's (`ServerTokenizer`)."""

    def count(self, text: str) -> int: ...

    def prefix(self, text: str, max_tokens: int) -> tuple[str, int]: ...

CHARS_PER_TOKEN = {"en": 4.2, "es": 3.7, "ko": 1.6, "zh": 1.4, "ja": 1.5, "random": 4.2, "sharegpt": 4.0}
"""Rough ratios for large multilingual tokenizers (Llama 3, Qwen 2.5); only used without a tokenizer."""

MAX_GROWTHS = 16
"""A text that a tokenizer still counts short after this many rounds of growth means the tokenizer is wrong."""

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt text; `token_count` is what the given tokenizer counted, None when only estimated."""

    text: str
    language: str
    target_tokens: int
    token_count: int | None = None
    messages: tuple[tuple[str, str], ...] = ()
    """(role, content) turns for the chat API; empty: one user turn holding `text`. `text` is what completions send."""
    output_tokens: int | None = None
    """max_tokens of this prompt's request; None: the sweep's output_tokens."""


@functools.cache
def passages(language: str) -> tuple[str, ...]:
    """The shipped passages of one language (`servelab/data/prompts/<language>.txt`, blank-line separated)."""
    if language not in LANGUAGES:
        raise ParamsError(
            f"no shipped prompts for language {language!r}; shipped: {', '.join(LANGUAGES)}"
        )
    text = resources.files("servelab").joinpath(f"data/prompts/{language}.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    found = tuple(p.strip().replace("\n", " ") for p in "\n".join(lines).split("\n\n") if p.strip())
    return found


def estimate_tokens(text: str, language: str) -> int:
    """ceil(characters / CHARS_PER_TOKEN[language]); a rough guess for when no tokenizer is at hand."""
    return math.ceil(len(text) / CHARS_PER_TOKEN.get(language, 4.0))


def trim_to_tokens(
    text: str,
    target_tokens: int,
    language: str,
    count_tokens: CountTokens | None = None,
    tokenizer: PromptTokenizer | None = None,
) -> tuple[str, int | None]:
    """The longest prefix of `text` with at most `target_tokens` tokens, and its counted length (None if estimated).

    With a tokenizer: cut at a token boundary (`tokenizer.prefix`). With only a counter: binary search over the
    prefix length in characters (about log2(len) counts).
    """
    if tokenizer is not None:
        return tokenizer.prefix(text, target_tokens)
    if count_tokens is None:
        chars = round(target_tokens * CHARS_PER_TOKEN.get(language, 4.0))
        return text[:chars], None
    total = count_tokens(text)
    if total <= target_tokens:
        return text, total
    low, high = 0, len(text)
    while high - low > 1:
        middle = (low + high) // 2
        if count_tokens(text[:middle]) <= target_tokens:
            low = middle
        else:
            high = middle
    prefix = text[:low]
    return prefix, count_tokens(prefix)


def _long_enough(text: str, target_tokens: int, language: str, count_tokens: CountTokens | None) -> bool:
    if count_tokens is None:
        return estimate_tokens(text, language) >= target_tokens
    # The estimate comes first: counting a text far too short with the server's tokenizer is wasted calls.
    return estimate_tokens(text, language) >= target_tokens and count_tokens(text) >= target_tokens


def _sentences(passage: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(passage) if s]


def _grow(
    parts: list[str], first: int, shipped: tuple[str, ...], rng: random.Random, language: str, target_tokens: int
) -> str:
    """Append the other passages in a random order to `parts` until the estimate is twice the target; the text."""
    order = [i for i in range(len(shipped)) if i != first]
    rng.shuffle(order)
    text = "\n\n".join(parts)
    for index in order:
        parts.append(shipped[index])
        text = "\n\n".join(parts)
        if estimate_tokens(text, language) >= 2 * target_tokens:
            break
    return text


def _grow_until(text: str, long_enough: Callable[[str], bool], grow: Callable[[str], str], target_tokens: int, where: str) -> str:
    """`text` grown by `grow` until `long_enough`; a counter that still says short after MAX_GROWTHS growths is wrong,
    and that is an error (`where` names the language in it)."""
    for _ in range(MAX_GROWTHS):
        if long_enough(text):
            return text
        text = grow(text)
    raise RuntimeError(f"the tokenizer counted fewer than {target_tokens} tokens in {len(text)} characters{where}")


def _cut_growing(
    tokenizer: PromptTokenizer, text: str, target_tokens: int, enough: int, grow: Callable[[str], str]
) -> tuple[str, int]:
    """`text` cut to `target_tokens` of the tokenizer's tokens, with one encoding per try that both cuts and says
    whether the text was long enough: while all of it counts fewer than `enough`, it is grown by `grow`. A
    tokenizer that still counts short after MAX_GROWTHS growths is wrong, and that is an error."""
    trimmed, counted = tokenizer.prefix(text, target_tokens)
    for _ in range(MAX_GROWTHS):
        if trimmed != text or counted >= enough:
            return trimmed, counted
        text = grow(text)
        trimmed, counted = tokenizer.prefix(text, target_tokens)
    raise RuntimeError(f"the tokenizer counted {counted} tokens in {len(text)} characters")


def compose_prompts(
    language: str,
    count: int,
    target_tokens: int,
    seed: int,
    *,
    count_tokens: CountTokens | None = None,
    tokenizer: PromptTokenizer | None = None,
    salt: str = "",
) -> list[Prompt]:
    """`count` prompts of about `target_tokens` tokens from the shipped passages of `language`.

    Each prompt starts with a random 8-hex-digit label, then a random sentence of a random passage, and
    runs on through the other passages in a random order (repeating them for long targets). The label
    makes every prompt's first tokens unique, so a server's prefix cache cannot reuse another request's
    prefill; pass a different `salt` per load point so points do not share prompts either.
    """
    if count < 0 or target_tokens < 1:
        raise ValueError(f"count must be >= 0 and target_tokens >= 1, got {count} and {target_tokens}")
    shipped = passages(language)
    rng = random.Random(f"servelab.measure.prompts:{language}:{seed}:{salt}")
    separator = " " if language in ("en", "es", "ko") else ""
    prompts: list[Prompt] = []
    for _ in range(count):
        first = rng.randrange(len(shipped))
        sentences = _sentences(shipped[first])
        start = rng.randrange(len(sentences))
        parts = [f"{rng.getrandbits(32):08x} " + separator.join(sentences[start:])]
        text = parts[0]
        if tokenizer is not None:
            while estimate_tokens(text, language) < target_tokens:
                text = _grow(parts, first, shipped, rng, language, target_tokens)
            trimmed, counted = _cut_growing(
                tokenizer, text, target_tokens, target_tokens - 2,
                lambda _: _grow(parts, first, shipped, rng, language, target_tokens),  # noqa: B023 - used in this iteration only
            )
            prompts.append(Prompt(trimmed, language, target_tokens, counted))
            continue
        text = _grow_until(
            text, lambda t: _long_enough(t, target_tokens, language, count_tokens),
            lambda _: _grow(parts, first, shipped, rng, language, target_tokens),  # noqa: B023 - used in this iteration only
            target_tokens, f" of {language}",
        )
        trimmed, counted = trim_to_tokens(text, target_tokens, language, count_tokens)
        prompts.append(Prompt(trimmed, language, target_tokens, counted))
    return prompts


def _word_pool() -> list[str]:
    words: list[str] = []
    for language in ("en", "es"):
        for passage in passages(language):
            words.extend(w.strip(".,;:!?'\"()").lower() for w in passage.split())
    return sorted({w for w in words if w})


def random_prompts(
    count: int,
    target_tokens: int,
    seed: int,
    *,
    tokenizer: PromptTokenizer | None = None,
    count_tokens: CountTokens | None = None,
    salt: str = "",
) -> list[Prompt]:
    """`count` prompts of random tokens (language 'random'), the usual way to measure without content effects.

    With a tokenizer.json: token ids drawn uniformly from its ordinary (non-special) vocabulary, decoded,
    then cut to length. Otherwise words drawn uniformly from the shipped English and Spanish passages, cut
    by the given tokenizer (a server's) or by the estimate.
    """
    rng = random.Random(f"servelab.measure.prompts:random:{seed}:{salt}")
    vocabulary = tokenizer if isinstance(tokenizer, JsonTokenizer) else None
    if vocabulary is not None:
        ids = vocabulary.ordinary_ids()
    else:
        pool = _word_pool()

    def draw(tokens: int) -> str:
        if vocabulary is not None:
            # Random ids rarely round-trip through decode and encode exactly: draw extra, then trim by count.
            return vocabulary.decode(rng.choices(ids, k=tokens + tokens // 4 + 8))
        return " ".join(rng.choices(pool, k=math.ceil(tokens * 1.5) + 4))

    prompts: list[Prompt] = []
    for _ in range(count):
        text = draw(target_tokens)
        if tokenizer is not None:
            trimmed, counted = _cut_growing(
                tokenizer, text, target_tokens, target_tokens, lambda grown: grown + " " + draw(target_tokens)
            )
            prompts.append(Prompt(trimmed, "random", target_tokens, counted))
            continue
        text = _grow_until(
            text, lambda t: count_tokens is None or count_tokens(t) >= target_tokens,
            lambda grown: grown + " " + draw(target_tokens), target_tokens, "",
        )
        trimmed, counted = trim_to_tokens(text, target_tokens, "random", count_tokens)
        prompts.append(Prompt(trimmed, "random", target_tokens, counted))
    return prompts


def _first_human_turn(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    turns = item.get("conversations", item.get("conversation"))
    if not isinstance(turns, list):
        return None
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from", turn.get("role")) in ("human", "user"):
            value = turn.get("value", turn.get("content"))
            return value if isinstance(value, str) and value.strip() else None
    return None


def load_sharegpt(
    path: str | Path,
    count: int,
    seed: int,
    *,
    count_tokens: CountTokens | None = None,
    min_tokens: int = 4,
    max_tokens: int | None = None,
    language: str = "sharegpt",
    salt: str = "",
) -> list[Prompt]:
    """Up to `count` first human turns of a local ShareGPT JSON file (a list of {"conversations": [...]}),
    shuffled with the seed; turns outside [min_tokens, max_tokens] are skipped. `target_tokens` is the
    turn's own length (counted, or estimated)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(
            f"prompts_file {path}: no such file; give a local ShareGPT-format JSON file"
        ) from None
    except (OSError, ValueError) as error:
        raise ParamsError(
            f"prompts_file {path}: not readable JSON ({error}); give a ShareGPT-format JSON list"
        ) from None
    if not isinstance(data, list):
        raise ParamsError(
            f"prompts_file {path}: the top level is {type(data).__name__}, expected a list of conversations"
        )
    texts = [t for t in (_first_human_turn(item) for item in data) if t is not None]
    random.Random(f"servelab.measure.prompts:sharegpt:{seed}:{salt}").shuffle(texts)
    prompts: list[Prompt] = []
    for text in texts:
        if len(prompts) >= count:
            break
        counted = count_tokens(text) if count_tokens is not None else None
        length = counted if counted is not None else estimate_tokens(text, language)
        if length < min_tokens or (max_tokens is not None and length > max_tokens):
            continue
        prompts.append(Prompt(text, language, length, counted))
    if not prompts and count > 0:
        raise ParamsError(
            f"prompts_file {path}: no conversation has a human turn of {min_tokens}..{max_tokens or 'any'} tokens; "
            "check that it is ShareGPT format ({'conversations': [{'from': 'human', 'value': ...}]})"
        )
    return prompts


def build_prompts(
    sweep: Sweep,
    language: str,
    *,
    count: int,
    seed: int | None = None,
    prompts_file: str | Path | None = None,
    count_tokens: CountTokens | None = None,
    tokenizer: PromptTokenizer | None = None,
    salt: str = "",
) -> list[Prompt]:
    """The prompts of one load point as the sweep asks: a ShareGPT `prompts_file`, random tokens
    (language 'random') or the shipped passages, `sweep.input_tokens` long (ShareGPT turns keep their own length),
    counted with `tokenizer` (the model's tokenizer.json or the server's) or `count_tokens` where given.

    `seed` defaults to sweep.seed; give each point its own seed (or `salt`) so points do not share prompts,
    and with them a server's prefix cache.
    """
    seed = sweep.seed if seed is None else seed
    if prompts_file:
        count_tokens = count_tokens or (tokenizer.count if tokenizer is not None else None)
        return load_sharegpt(prompts_file, count, seed, count_tokens=count_tokens, salt=salt)
    if language == "random":
        return random_prompts(
            count, sweep.input_tokens, seed, tokenizer=tokenizer, count_tokens=count_tokens, salt=salt
        )
    return compose_prompts(
        language, count, sweep.input_tokens, seed, count_tokens=count_tokens, tokenizer=tokenizer, salt=salt
    )
