"""The trained demo model echoes, and each trained adapter does its own task (transformers + peft).

The first run builds the fixture (about a minute on 2 cores); later runs read it from the cache.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.fixtures.trained import (
    DEMO_INPUTS,
    NOUNS,
    TASKS,
    WORDS,
    demo_prompt,
    expected_answer,
    random_items,
    trained_demo,
)

pytestmark = pytest.mark.slow  # only when the cache is cold: building the fixture trains four models

NUM_HELD_OUT = 20
MIN_EXACT = 16  # 80 % of NUM_HELD_OUT


@pytest.fixture(scope="module")
def demo() -> tuple[Path, dict[str, Path]]:
    return trained_demo()


@pytest.fixture(scope="module")
def tokenizer(demo):  # type: ignore[no-untyped-def]
    import transformers

    return transformers.AutoTokenizer.from_pretrained(demo[0])


@pytest.fixture(scope="module")
def peft_model(demo):  # type: ignore[no-untyped-def]
    """The base with all three adapters loaded side by side, as a multi-LoRA server holds them."""
    import peft
    import transformers

    model_dir, adapters = demo
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    names = list(adapters)
    model = peft.PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    return model.eval()


@pytest.fixture(scope="module")
def held_out() -> list[list[str]]:
    rng = random.Random(20240718)  # the trainers draw from seeds 0..3
    return [random_items(rng) for _ in range(NUM_HELD_OUT)]


def _greedy_answers(model, tokenizer, inputs: list[list[str]], adapter: str | None) -> list[str]:  # type: ignore[no-untyped-def]
    """One left-padded batch, greedy; `adapter=None` runs the base with every adapter disabled."""
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(
        [demo_prompt(items) for items in inputs],
        return_tensors="pt",
        padding=True,
        return_token_type_ids=False,
    )
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                out = model.generate(**batch, max_new_tokens=12, do_sample=False)
        else:
            model.set_adapter(adapter)
            out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def test_every_demo_word_is_one_token_after_a_space(tokenizer):
    for word in WORDS:
        assert len(tokenizer(f" {word}", add_special_tokens=False).input_ids) == 1, word


def test_chat_template_renders_the_demo_prompt(tokenizer):
    messages = [{"role": "user", "content": "cat 3 dog"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<s>" + demo_prompt(["cat", "3", "dog"])


def test_demo_model_and_adapters_are_real_hf_and_peft_folders(demo):
    model_dir, adapters = demo
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "mistral"
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    assert set(adapters) == set(TASKS)
    ranks = set()
    for task, folder in adapters.items():
        adapter_config = json.loads((folder / "adapter_config.json").read_text())
        assert adapter_config["peft_type"] == "LORA", task
        assert adapter_config["base_model_name_or_path"] == str(model_dir)
        assert (folder / "adapter_model.safetensors").is_file(), task
        ranks.add(adapter_config["r"])
    assert len(ranks) > 1, "the adapters should exercise unequal ranks"


def test_trained_demo_is_cached(demo):
    assert trained_demo() == demo


def test_base_model_echoes_and_does_no_task(peft_model, tokenizer, held_out):
    answers = _greedy_answers(peft_model, tokenizer, held_out, adapter=None)
    echoed = sum(a == expected_answer(None, items) for a, items in zip(answers, held_out, strict=True))
    assert echoed >= MIN_EXACT, list(zip(held_out, answers, strict=True))
    for task in TASKS:
        hits = sum(a == expected_answer(task, items) for a, items in zip(answers, held_out, strict=True))
        assert hits == 0, task


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_adapter_does_its_own_task_on_held_out_inputs(peft_model, tokenizer, held_out, task):
    answers = _greedy_answers(peft_model, tokenizer, held_out, adapter=task)
    exact = sum(a == expected_answer(task, items) for a, items in zip(answers, held_out, strict=True))
    assert exact >= MIN_EXACT, list(zip(held_out, answers, strict=True))
    for other in [None, *(t for t in TASKS if t != task)]:
        hits = sum(a == expected_answer(other, items) for a, items in zip(answers, held_out, strict=True))
        assert hits <= NUM_HELD_OUT - MIN_EXACT, (task, other)


def test_adapters_answer_side_by_side_in_one_mixed_batch(peft_model, tokenizer):
    """The multi-LoRA premise: one batch, a different adapter per row (peft's `adapter_names`)."""
    import torch

    items = ["cat", "3", "dog", "7"]
    rows = ["__base__", *sorted(TASKS)]
    tokenizer.padding_side = "left"
    batch = tokenizer(
        [demo_prompt(items)] * len(rows), return_tensors="pt", padding=True, return_token_type_ids=False
    )
    with torch.no_grad():
        out = peft_model.generate(**batch, adapter_names=rows, max_new_tokens=12, do_sample=False)
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    expected = [expected_answer(None if row == "__base__" else row, items) for row in rows]
    assert [a.strip() for a in answers] == expected


def test_held_out_inputs_mix_nouns_and_digits(held_out):
    for items in held_out:
        assert any(i in NOUNS for i in items) and any(i.isdigit() for i in items), items
        assert len(set(items)) == len(items), items


@pytest.mark.parametrize("task", [None, *sorted(TASKS)])
def test_demo_inputs_get_the_expected_answers(peft_model, tokenizer, task):
    """`make demo` treats any other answer from a replica as a serving bug, so these must hold here."""
    inputs = [list(items) for items in DEMO_INPUTS]
    answers = _greedy_answers(peft_model, tokenizer, inputs, adapter=task)
    assert answers == [expected_answer(task, items) for items in inputs]
