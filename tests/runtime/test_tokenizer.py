"""The runtime tokenizer agrees with transformers and streams text without splitting characters."""

from __future__ import annotations

import pytest
from lorafleet.runtime.tokenizer import IncrementalDetokenizer, Tokenizer

from tests.fixtures import tiny_model


@pytest.fixture(scope="module")
def tokenizers():  # type: ignore[no-untyped-def]
    import transformers

    model_dir = tiny_model("mistral")
    return Tokenizer(model_dir), transformers.AutoTokenizer.from_pretrained(model_dir)


def test_encode_decode_and_specials_match_transformers(tokenizers) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = tokenizers
    text = "The adapter answers in SQL. ¿Qué tal? 日本語 🙂"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
    assert ours.decode(ours.encode(text), skip_special_tokens=True) == theirs.decode(
        theirs.encode(text), skip_special_tokens=True
    )
    assert (ours.eos_token_id, ours.bos_token_id) == (theirs.eos_token_id, theirs.bos_token_id)
    assert ours.is_special(ours.eos_token_id) and not ours.is_special(ours.encode("The", False)[0])


def test_chat_template_renders_as_transformers_does(tokenizers) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = tokenizers
    messages = [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": "Count the users."},
        {"role": "assistant", "content": "SELECT count(*) FROM users;"},
        {"role": "user", "content": "And the admins?"},
    ]
    for generation_prompt in (True, False):
        expected = theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        assert ours.apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected


def test_incremental_detokenization_never_splits_a_multibyte_character(tokenizers) -> None:  # type: ignore[no-untyped-def]
    ours, _ = tokenizers
    text = "naïve 日本語 🙂 done"
    prompt = ours.encode("Say:")
    ids = ours.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # byte-level BPE: multi-byte characters span tokens
    detok = IncrementalDetokenizer(ours, prompt)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) == ours.decode(prompt + ids)[len(ours.decode(prompt)) :]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces  # some token completed no character on its own and was held back


def test_flush_returns_the_held_back_bytes_of_an_unfinished_character(tokenizers) -> None:  # type: ignore[no-untyped-def]
    ours, _ = tokenizers
    prompt = ours.encode("Say:")
    ids = ours.encode("ok 日本", add_special_tokens=False)
    cut = next(n for n in range(1, len(ids)) if ours.decode(ids[:n]).endswith("\ufffd"))
    detok = IncrementalDetokenizer(ours, prompt)
    pieces = [detok.add(i) for i in ids[:cut]]
    held_back = detok.flush()
    assert held_back.endswith("\ufffd")
    assert "".join(pieces) + held_back == ours.decode(prompt + ids[:cut])[len(ours.decode(prompt)) :]
    assert detok.flush() == ""  # flushed once
