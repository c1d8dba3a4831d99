"""Mistral's sliding attention window is honoured in prefill, chunked prefill and decode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams

from tests.fixtures import tiny_model
from tests.runtime.oracle import corpus_prompts, engine_prefill_logits

WINDOW = 8


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("windowed") / "mistral"
    shutil.copytree(tiny_model("mistral"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["sliding_window"] = WINDOW
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@torch.no_grad()
def test_sliding_window_logits_and_greedy_tokens_match_transformers(windowed: Path) -> None:
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(
        windowed, torch_dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    engine = Engine.from_pretrained(windowed, block_size=4, progress=lambda _: None)
    ids = corpus_prompts(engine, 1)[0]
    assert len(ids) > 2 * WINDOW
    expected = reference(torch.tensor([ids])).logits[0]
    unwindowed = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_model("mistral"), torch_dtype=torch.float32
    )
    assert not torch.allclose(
        expected, unwindowed(torch.tensor([ids])).logits[0], atol=1e-3
    )  # the window matters
    for chunk in (None, 5):
        torch.testing.assert_close(
            engine_prefill_logits(engine, ids, None, chunk=chunk), expected, atol=1e-4, rtol=0
        )
    tokens = list(ids)
    for _ in range(12):
        tokens.append(int(reference(torch.tensor([tokens])).logits[0, -1].argmax()))
    with engine:
        [result] = engine.generate(
            [GenerationRequest(ids, SamplingParams(max_new_tokens=12, ignore_eos=True))]
        )
    assert [t.id for t in result.tokens] == tokens[len(ids) :]
