"""Prefill logits of the engine's model equal transformers + peft for the base and every adapter."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures import STANDARD_ADAPTERS
from tests.runtime.oracle import corpus_prompts, engine_for, engine_prefill_logits, oracle_logits

CASES = [None, *STANDARD_ADAPTERS]
ARCHS = ["mistral", "llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "mixtral"]


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_match_transformers_and_peft_for_base_and_each_adapter(arch: str) -> None:
    engine = engine_for(arch)
    prompts = corpus_prompts(engine, 2)
    for adapter in CASES:
        for ids in prompts:
            ours = engine_prefill_logits(engine, ids, adapter)
            ref = oracle_logits(arch, ids, adapter)
            torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, msg=f"{arch} adapter={adapter}")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_adapter_changes_the_logits(arch: str) -> None:
    # Guards the test above: equality would be vacuous if adapters were silently ignored.
    engine = engine_for(arch)
    ids = corpus_prompts(engine, 1)[0]
    base = engine_prefill_logits(engine, ids, None)
    for adapter in STANDARD_ADAPTERS:
        assert (engine_prefill_logits(engine, ids, adapter) - base).abs().max() > 1e-2, adapter


@pytest.mark.parametrize("arch", ["mistral", "llama", "qwen3", "phi3", "gemma2", "gemma3", "mixtral"])
def test_chunked_prefill_over_the_paged_cache_gives_the_same_logits(arch: str) -> None:
    engine = engine_for(arch, block_size=4)  # chunks of 5 straddle block boundaries
    ids = corpus_prompts(engine, 1)[0]
    for adapter in (None, "r16-all"):
        chunked = engine_prefill_logits(engine, ids, adapter, chunk=5)
        torch.testing.assert_close(chunked, oracle_logits(arch, ids, adapter), atol=1e-4, rtol=0)
