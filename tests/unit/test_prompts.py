"""Prompts: shipped multilingual passages, composition to a token length, random tokens, ShareGPT files."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
from servelab.errors import ParamsError
from servelab.measure.prompts import (
    CHARS_PER_TOKEN,
    build_prompts,
    compose_prompts,
    load_sharegpt,
    passages,
    random_prompts,
    trim_to_tokens,
)
from servelab.measure.tokens import JsonTokenizer
from servelab.params import LANGUAGES, ConcurrencyLoad, Sweep

SCRIPTS = {
    "ko": re.compile(r"[\uac00-\ud7a3]"),
    "zh": re.compile(r"[\u4e00-\u9fff]"),
    "ja": re.compile(r"[\u3040-\u30ff]"),
    "es": re.compile(r"[ñáéíóú]"),
    "en": re.compile(r"\bthe\b"),
}


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word (monotonic in the prefix length)."""
    return len(text.split())


def characters(text: str) -> int:
    return len(text)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_shipped_language_has_many_distinct_passages_in_its_own_script(language):
    found = passages(language)
    assert len(found) >= 12
    assert len(set(found)) == len(found)
    assert all(not p.startswith("#") for p in found)
    assert all(SCRIPTS[language].search(p) for p in found)
    if language != "ja":
        assert not any(SCRIPTS["ja"].search(p) for p in found)
    if language != "ko":
        assert not any(SCRIPTS["ko"].search(p) for p in found)


def test_every_params_language_is_shipped_and_has_a_ratio():
    shipped = {path.stem for path in resources.files("servelab").joinpath("data/prompts").iterdir()}
    assert set(LANGUAGES) == shipped
    assert set(LANGUAGES) | {"random"} <= set(CHARS_PER_TOKEN)


def test_an_unknown_language_is_a_params_error():
    with pytest.raises(ParamsError, match="shipped"):
        passages("fr")


@pytest.mark.parametrize("language", LANGUAGES)
def test_composed_prompts_hit_the_target_exactly_with_a_tokenizer(language):
    counter = words if language in ("en", "es", "ko") else characters
    prompts = compose_prompts(language, 5, 96, seed=3, count_tokens=counter)
    assert [p.token_count for p in prompts] == [96] * 5
    assert [counter(p.text) for p in prompts] == [96] * 5
    assert {p.language for p in prompts} == {language}
    assert {p.target_tokens for p in prompts} == {96}


def test_without_a_tokenizer_the_length_follows_the_language_ratio():
    for language in LANGUAGES:
        prompt = compose_prompts(language, 1, 200, seed=0)[0]
        assert len(prompt.text) == round(200 * CHARS_PER_TOKEN[language])
        assert prompt.token_count is None


def test_long_targets_run_through_the_passages_again():
    total_words = sum(words(p) for p in passages("en"))
    prompt = compose_prompts("en", 1, 3 * total_words, seed=1, count_tokens=words)[0]
    assert prompt.token_count == 3 * total_words


def test_the_same_seed_gives_the_same_prompts_and_another_seed_or_salt_others():
    first = compose_prompts("zh", 8, 64, seed=11)
    assert compose_prompts("zh", 8, 64, seed=11) == first
    assert compose_prompts("zh", 8, 64, seed=12) != first
    assert compose_prompts("zh", 8, 64, seed=11, salt="point-2") != first


def test_prompts_begin_differently_so_no_prefix_cache_can_share_them():
    prompts = compose_prompts("en", 200, 32, seed=0)
    assert len({p.text[:8] for p in prompts}) == 200
    assert all(re.fullmatch(r"[0-9a-f]{8}", p.text[:8]) for p in prompts)


def test_prompts_vary_in_where_they_start():
    prompts = compose_prompts("en", 40, 64, seed=5)
    assert len({p.text[9:60] for p in prompts}) >= 20


def test_trim_to_tokens_keeps_short_texts_whole():
    assert trim_to_tokens("a b c", 10, "en", words) == ("a b c", 3)


@pytest.fixture(scope="module")
def passage_tokenizer(tmp_path_factory) -> JsonTokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = sorted({w for p in passages("en") for w in re.findall(r"\w+|[^\w\s]+", p)})
    tokenizer = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(["[UNK]", *vocabulary])}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<s>"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return JsonTokenizer(path)


def test_random_prompts_with_a_tokenizer_hit_the_target_and_draw_no_special_tokens(passage_tokenizer):
    prompts = random_prompts(6, 50, seed=2, tokenizer=passage_tokenizer)
    assert [p.token_count for p in prompts] == [50] * 6
    assert [passage_tokenizer.count(p.text) for p in prompts] == [50] * 6
    assert {p.language for p in prompts} == {"random"}
    assert not any("<s>" in p.text or "[UNK]" in p.text for p in prompts)
    assert len({p.text for p in prompts}) == 6


def test_random_prompts_without_a_tokenizer_are_words_of_the_shipped_passages():
    prompts = random_prompts(4, 40, seed=9)
    pool = {
        w.strip(".,;:!?'\"()").lower() for lang in ("en", "es") for p in passages(lang) for w in p.split()
    }
    for prompt in prompts:
        assert set(prompt.text.split()[:-1]) <= pool
    assert random_prompts(4, 40, seed=9) == prompts
    assert random_prompts(4, 40, seed=10) != prompts


def _sharegpt(tmp_path, items) -> str:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return str(path)


CONVERSATIONS = [
    {
        "id": str(i),
        "conversations": [
            {"from": "human", "value": f"question number {i} " + "word " * i},
            {"from": "gpt", "value": "answer"},
        ],
    }
    for i in range(1, 21)
] + [
    {"id": "no-human", "conversations": [{"from": "gpt", "value": "only an answer here"}]},
    {"id": "broken"},
]


def test_sharegpt_gives_first_human_turns_shuffled_by_the_seed(tmp_path):
    path = _sharegpt(tmp_path, CONVERSATIONS)
    prompts = load_sharegpt(path, 10, seed=4, count_tokens=words, min_tokens=4)
    assert len(prompts) == 10
    assert all(p.text.startswith("question number") for p in prompts)
    assert all(p.target_tokens == p.token_count == words(p.text) >= 4 for p in prompts)
    assert load_sharegpt(path, 10, seed=4, count_tokens=words) == prompts
    assert [p.text for p in load_sharegpt(path, 10, seed=5, count_tokens=words)] != [p.text for p in prompts]


def test_sharegpt_skips_turns_outside_the_length_bounds(tmp_path):
    prompts = load_sharegpt(
        _sharegpt(tmp_path, CONVERSATIONS), 100, seed=0, count_tokens=words, min_tokens=5, max_tokens=10
    )
    assert sorted(p.token_count for p in prompts) == [5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not readable JSON"),
        ('{"a": 1}', "expected a list"),
        ("[{}]", "no conversation"),
    ],
)
def test_a_bad_sharegpt_file_is_a_params_error_that_says_what_to_do(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ParamsError, match=message):
        load_sharegpt(path, 5, seed=0)


def _sweep(**kwargs) -> Sweep:
    return Sweep(load=(ConcurrencyLoad(values=(1,)),), input_tokens=48, **kwargs)


def test_build_prompts_follows_the_sweep(tmp_path):
    assert {p.language for p in build_prompts(_sweep(), "ko", count=3, seed=1)} == {"ko"}
    assert {p.language for p in build_prompts(_sweep(), "random", count=3, seed=1)} == {"random"}
    shared = build_prompts(_sweep(), "en", count=3, seed=1, prompts_file=_sharegpt(tmp_path, CONVERSATIONS))
    assert all(p.text.startswith("question number") for p in shared)
    assert {p.target_tokens for p in build_prompts(_sweep(), "ja", count=2, count_tokens=characters)} == {48}


def test_build_prompts_defaults_to_the_sweep_seed():
    assert build_prompts(_sweep(seed=7), "es", count=2) == build_prompts(_sweep(), "es", count=2, seed=7)


def test_a_tokenizer_that_never_counts_enough_is_an_error_not_an_endless_prompt():
    """A server that answers /tokenize with an empty list (a request in another engine's format) counts 0."""

    class CountsNothing:
        def count(self, text: str) -> int:
            return 0

        def prefix(self, text: str, max_tokens: int) -> tuple[str, int]:
            return text, 0

    with pytest.raises(RuntimeError, match="counted"):
        compose_prompts("en", 1, 64, seed=1, tokenizer=CountsNothing())
    with pytest.raises(RuntimeError, match="counted"):
        random_prompts(1, 64, seed=1, tokenizer=CountsNothing())
    with pytest.raises(RuntimeError, match="counted"):
        compose_prompts("ko", 1, 64, seed=1, count_tokens=lambda text: 0)
