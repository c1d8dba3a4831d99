"""The prefix cache in the running engine: a repeated prefix is not recomputed, each adapter (and
the base) only reuses its own blocks, and every answer still equals transformers + peft."""

from __future__ import annotations

import pytest
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams

from tests.runtime.oracle import corpus_prompts, engine_for, oracle_greedy

NUM_TOKENS = 12
BLOCK = 8


def _shared_prefix_prompts(engine: Engine, count: int) -> list[list[int]]:
    """`count` prompts that share a 3-block prefix and end differently."""
    lines = corpus_prompts(engine, count + 3)
    prefix = (lines[0] + lines[1] + lines[2])[: 3 * BLOCK]
    return [prefix + lines[3 + i][:5] for i in range(count)]


def _run(engine: Engine, ids: list[int], adapter: str | None) -> tuple[list[int], int]:
    """Greedy tokens of one request, and how many prompt tokens it found in the cache."""
    before = engine.stats().prefix_cache_hit_tokens
    params = SamplingParams(max_new_tokens=NUM_TOKENS, ignore_eos=True)
    [result] = engine.generate([GenerationRequest(ids, params, adapter_id=adapter)])
    return [t.id for t in result.tokens], engine.stats().prefix_cache_hit_tokens - before


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_each_adapter_and_the_base_reuse_only_their_own_prefix_and_match_peft(arch: str) -> None:
    with engine_for(arch, block_size=BLOCK) as engine:
        prompts = _shared_prefix_prompts(engine, 6)
        order = [
            ("r16-all", 0),  # computes the prefix: nothing cached yet
            ("r16-all", 1),  # same adapter, same prefix: 3 blocks reused
            ("r8-qv", 2),  # another adapter: its keys/values differ, nothing reused
            (None, 3),  # the base: nothing reused
            (None, 4),  # the base again: its own blocks reused
            ("r16-all", 5),  # the first adapter's blocks are still cached
        ]
        runs = [(adapter, i, *_run(engine, prompts[i], adapter)) for adapter, i in order]
        stats = engine.stats()
    hits = [hit for *_, hit in runs]
    assert hits == [0, 3 * BLOCK, 0, 0, 3 * BLOCK, 3 * BLOCK]
    assert stats.prefix_cache_hit_tokens == 9 * BLOCK
    assert stats.prefix_cache_query_tokens >= stats.prefix_cache_hit_tokens
    for adapter, i, tokens, _ in runs:
        assert tokens == oracle_greedy(arch, prompts[i], adapter, NUM_TOKENS), (adapter, i)


def test_turning_the_cache_off_recomputes_every_prompt() -> None:
    with engine_for("mistral", block_size=BLOCK, prefix_caching=False) as engine:
        prompts = _shared_prefix_prompts(engine, 2)
        first, _ = _run(engine, prompts[0], "r8-qv")
        second, hit = _run(engine, prompts[1], "r8-qv")
        assert hit == 0 and engine.stats().prefix_cache_query_tokens == 0
    assert second == oracle_greedy("mistral", prompts[1], "r8-qv", NUM_TOKENS)


def test_prompt_logprobs_requests_compute_their_whole_prompt() -> None:
    with engine_for("mistral", block_size=BLOCK) as engine:
        prompts = _shared_prefix_prompts(engine, 2)
        _run(engine, prompts[0], None)
        request = GenerationRequest(prompts[1], SamplingParams(max_new_tokens=2), decoder_input_details=True)
        [result] = engine.generate([request])
        assert engine.stats().prefix_cache_hit_tokens == 0
    assert all(t.logprob is not None for t in result.prompt_tokens[1:])
