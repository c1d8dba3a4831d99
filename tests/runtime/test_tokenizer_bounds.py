"""The cheap token bound and tail tokenization agree with full tokenization, on hostile text.

`Tokenizer.must_exceed` may refuse a prompt without tokenizing it, and `Tokenizer.encode_tail`
tokenizes only a tail for `truncate`: both must give exactly what tokenizing the whole text
gives. They are checked here against `tokenizers` itself on the tokenizer pipelines the
runtime serves (byte-level BPE with the GPT-2 or Qwen2 split and NFC, SentencePiece BPE with
Metaspace or the legacy Prepend/Replace normalizer, with byte fallback) and on one it cannot
reason about (which must fall back to the whole text), over generated text made of the pieces
that break naive cuts: digit runs, contractions, whitespace runs, combining marks, Hangul jamo,
a typed "▁", emoji, CJK, special-token text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lorafleet.runtime.tokenizer import Tokenizer
from lorafleet.runtime.tokenizer_bounds import KNOWN_SPLIT_PATTERNS

from tests.fixtures import tiny_model

CORPUS = (Path(__file__).parents[1] / "fixtures" / "corpus.txt").read_text().splitlines()
QWEN2_SPLIT = next(p for p in KNOWN_SPLIT_PATTERNS if r"|\p{N}|" in p)
PIECES = [
    "the", "quick", "brown", "fox", " ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\r\n",
    "it's", "'s", "'ll", "don't", "1", "12", "1234567", "3.14", "(x)", "!!", "?!", "...", "--",
    "é", "e\u0301", "\u0301", "\u1100\u1161\u11a8", "\u1161", "\u2581", "\u2581\u2581", "\xa0", "\u3000",
    "日本語", "中文", "😀", "👩\u200d💻", "ﬁ", "Ａ", "ŀ", "¨", "<s>", "</s>", "Σ", "ς", "abc", "Zz",
]  # fmt: skip
ALL = ["byte-level (fixture)", "qwen2 split + NFC", "metaspace", "legacy prepend/replace", "unproven split"]
TEXTS = st.lists(st.sampled_from(PIECES), max_size=160).map("".join)


def _bpe(pre_tokenizer, *, byte_fallback: bool):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors, trainers

    tokenizer = HFTokenizer(
        models.BPE(unk_token="<unk>" if byte_fallback else None, byte_fallback=byte_fallback)
    )
    tokenizer.pre_tokenizer = pre_tokenizer
    alphabet = (
        pre_tokenizers.ByteLevel.alphabet()
        if not byte_fallback
        else ["\u2581", *"abcdefghijklmnopqrstuvwxyz"]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    spec = json.loads(tokenizer.to_str())
    if byte_fallback:  # SentencePiece vocabularies carry the 256 byte tokens and "▁▁" runs
        vocab = spec["model"]["vocab"]
        for byte in range(256):
            vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
        for run in ("\u2581\u2581", "\u2581\u2581\u2581\u2581"):
            vocab.setdefault(run, len(vocab))
            spec["model"]["merges"].insert(0, [run[: len(run) // 2], run[len(run) // 2 :]])
    return spec


def _write(folder: Path, spec: dict) -> Tokenizer:  # type: ignore[type-arg]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return Tokenizer(folder)


def _zoo(root: Path) -> dict[str, Tokenizer]:
    from tokenizers import pre_tokenizers

    qwen2 = _bpe(
        pre_tokenizers.Sequence(
            [pre_tokenizers.Split(_regex(QWEN2_SPLIT), "isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
        ),
        byte_fallback=False,
    )
    qwen2["normalizer"] = {"type": "NFC"}
    # Trained with split=True (so no merge joins across "▁"), served with split=False as
    # transformers converts Llama/Mistral tokenizers.
    metaspace = _bpe(pre_tokenizers.Metaspace(prepend_scheme="first", split=True), byte_fallback=True)
    metaspace["pre_tokenizer"]["split"] = False
    legacy = json.loads(json.dumps(metaspace))
    legacy["pre_tokenizer"] = None
    legacy["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ],
    }
    unproven = json.loads(json.dumps(qwen2))
    unproven["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\S+\s?"
    built = [
        Tokenizer(tiny_model("mistral")),
        *(_write(root / str(i), spec) for i, spec in enumerate((qwen2, metaspace, legacy, unproven))),
    ]
    return dict(zip(ALL, built, strict=True))


def _regex(pattern: str):  # type: ignore[no-untyped-def]
    from tokenizers import Regex

    return Regex(pattern)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    return _zoo(tmp_path_factory.mktemp("zoo"))


def test_the_served_pipelines_are_recognised_and_the_unknown_one_is_not(zoo) -> None:  # type: ignore[no-untyped-def]
    cuts = {name: tok.bounds.tail_cut for name, tok in zoo.items()}
    assert all(cuts[name] is not None for name in ALL[:4]), cuts
    assert cuts["unproven split"] is None
    assert cuts["legacy prepend/replace"].after_space and not cuts["metaspace"].after_space
    assert all(tok.bounds.max_token_bytes for tok in zoo.values())


@pytest.mark.parametrize("name", ALL[:4])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
@example(text="a<s>  ")  # found by this test: the space after `<s>` starts a Prepend'ed segment
def test_every_cut_starts_a_tail_whose_tokens_end_the_whole_texts_tokens(zoo, name, text) -> None:  # type: ignore[no-untyped-def]
    # The claim `encode_tail` rests on, at every cut: the tail's tokens are a suffix of the whole's.
    tokenizer = zoo[name]
    cut, whole = tokenizer.bounds.tail_cut, tokenizer.encode(text, add_special_tokens=False)
    start = cut.next_cut(text, 0)
    while start is not None:
        tail = tokenizer.encode(text[start:], add_special_tokens=False)
        assert whole[len(whole) - len(tail) :] == tail, (start, text[start - 3 : start + 3])
        start = cut.next_cut(text, start + 2)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, keep=st.integers(1, 24), add_special=st.booleans())
def test_tail_tokenization_equals_the_last_tokens_of_the_whole_text(
    zoo, name, text, keep, add_special
) -> None:  # type: ignore[no-untyped-def]
    tokenizer = zoo[name]
    assert tokenizer.encode_tail(text, keep, add_special) == tokenizer.encode(text, add_special)[-keep:]


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, limit=st.integers(1, 120))
def test_the_cheap_bound_only_refuses_texts_that_have_more_tokens(zoo, name, text, limit) -> None:  # type: ignore[no-untyped-def]
    tokenizer = zoo[name]
    if tokenizer.must_exceed(text, limit):
        assert len(tokenizer.encode(text, add_special_tokens=False)) > limit


@pytest.mark.parametrize("name", ALL[:4])
def test_tail_tokenization_never_reads_the_head(zoo, name) -> None:  # type: ignore[no-untyped-def]
    # The head holds a lone surrogate, which `tokenizers` cannot read at all: the tail is
    # tokenized alone, and gives the whole text's last tokens (checked on the readable text).
    tokenizer = zoo[name]
    tail = " ".join(CORPUS) * 3
    head = "a\ud800b " * 20_000
    assert tokenizer.encode_tail(head + tail, 50) == tokenizer.encode("x " + tail)[-50:]


def test_the_bound_refuses_long_texts_and_lets_short_ones_through(zoo) -> None:  # type: ignore[no-untyped-def]
    tokenizer = zoo["byte-level (fixture)"]
    per_token = tokenizer.bounds.max_token_bytes
    assert per_token is not None
    assert tokenizer.must_exceed("a" * (100 * per_token + 1), 100)
    assert not tokenizer.must_exceed("a" * (100 * per_token), 100)
    assert not tokenizer.must_exceed("日本語" * 10, 100)


def test_token_spans_cover_the_text_with_the_tokenizers_ids(zoo) -> None:  # type: ignore[no-untyped-def]
    text = "Hello wörld, it's 12345 日本語 😀  end\n"
    for name, tokenizer in zoo.items():
        spans = tokenizer.token_spans(text)
        assert [s[0] for s in spans] == tokenizer.encode(text), name
        assert spans[0][1:] == ("<s>", 0, 0), name  # BOS: its own text, no span
        assert "".join(piece for _, piece, _, _ in spans[1:]) == text, name
        assert all(piece == text[start:stop] for _, piece, start, stop in spans[1:]), name


@pytest.mark.parametrize("name", ALL[:4])
def test_a_space_right_after_an_added_token_is_no_cut(zoo, name) -> None:  # type: ignore[no-untyped-def]
    cut = zoo[name].bounds.tail_cut
    assert cut.next_cut("hello<s>  world again", 0) == (16 if cut.after_space else 15)
