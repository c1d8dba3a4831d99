"""`num_shard=2` on the CPU (gloo, real worker processes): the same greedy tokens as the oracle
(transformers + peft, fp32) and as the single-shard engine, with mixed adapters in one batch;
adapters loaded, evicted and reloaded while serving reach every shard; clear errors when a model
cannot be split."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch
from lorafleet.runtime.distributed.plan import ShardPlan
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams
from lorafleet.runtime.errors import ModelLoadError
from lorafleet.runtime.models.loader import read_config

from tests.fixtures import standard_adapters, tiny_model
from tests.runtime.oracle import (
    corpus_prompts,
    engine_for,
    engine_prefill_logits,
    oracle_greedy,
    oracle_logits,
)
from tests.runtime.test_mixed_batch import _staggered

NUM_TOKENS = 12
ADAPTERS = [None, "r8-qv", "r16-all", "r64-rslora", "r8-mlp-patterns", "r16-all"]


def _requests(engine: Engine) -> list[GenerationRequest]:
    prompts = corpus_prompts(engine, len(ADAPTERS))
    params = SamplingParams(max_new_tokens=NUM_TOKENS, ignore_eos=True)
    return [GenerationRequest(p, params, adapter_id=a) for p, a in zip(prompts, ADAPTERS, strict=True)]


@pytest.mark.parametrize("arch", ["llama", "mistral"])
async def test_two_shards_give_the_oracles_and_one_shards_greedy_tokens_with_mixed_adapters(
    arch: str,
) -> None:
    with engine_for(arch, max_batch_prefill_tokens=16, dtype="float32") as single:
        requests = _requests(single)
        expected = await _staggered(single, requests)
    with engine_for(arch, max_batch_prefill_tokens=16, dtype="float32", num_shard=2) as sharded:
        assert sharded.info.num_shard == 2
        got = await _staggered(sharded, requests)
        assert sharded.stats().batch_size == 0
        # Prompt logits too, through the sharded runner's own step (all-reduced partial sums).
        ids = list(requests[2].prompt)
        logits = engine_prefill_logits(sharded, ids, "r16-all", chunk=7)
    torch.testing.assert_close(logits, oracle_logits(arch, ids, "r16-all"), atol=2e-4, rtol=1e-4)
    assert got == expected
    for request, tokens in zip(requests, got, strict=True):
        oracle = oracle_greedy(arch, list(request.prompt), request.adapter_id, NUM_TOKENS)
        assert tokens == oracle, request.adapter_id


async def test_adapters_loaded_and_evicted_while_serving_reach_every_shard() -> None:
    """Two slots for four adapters, loaded through the admin API after start: each step's
    writes, activations and clears must land in the same slots and pages on both shards."""
    model_dir = tiny_model("llama")
    with Engine.from_pretrained(model_dir, progress=lambda _: None, dtype="float32", num_shard=2,
                                max_loaded_adapters=2, max_lora_rank=64) as engine:
        for name, path in standard_adapters(model_dir).items():
            engine.load_adapter(name, str(path))
        requests = _requests(engine)
        got = [await _staggered(engine, [request]) for request in requests]  # one at a time: evictions
        assert engine.stats().adapter_evictions > 0
        assert engine.unload_adapter("r8-qv") is not None
    for request, [tokens] in zip(requests, got, strict=True):
        assert tokens == oracle_greedy("llama", list(request.prompt), request.adapter_id, NUM_TOKENS)


@pytest.mark.parametrize("arch", ["qwen3", "phi3", "gemma2", "gemma3"])
async def test_other_families_shard_to_the_oracles_greedy_tokens(arch: str) -> None:
    with engine_for(arch, max_batch_prefill_tokens=16, dtype="float32", num_shard=2) as engine:
        requests = _requests(engine)[:4]
        got = await _staggered(engine, requests)
    for request, tokens in zip(requests, got, strict=True):
        oracle = oracle_greedy(arch, list(request.prompt), request.adapter_id, NUM_TOKENS)
        assert tokens == oracle, request.adapter_id


def test_heads_that_do_not_divide_fail_at_start_naming_them() -> None:
    _, args = read_config(tiny_model("llama"))  # 4 heads, 2 KV heads
    with pytest.raises(ModelLoadError, match=r"KV heads \(2\) do not divide by 4"):
        Engine.from_pretrained(tiny_model("llama"), progress=lambda _: None, num_shard=4)
    with pytest.raises(ModelLoadError, match=r"attention heads \(4\) do not divide by 3"):
        ShardPlan(0, 3, args)


def test_mixture_of_experts_refuses_to_shard() -> None:
    with pytest.raises(ModelLoadError, match="mixture of experts"):
        Engine.from_pretrained(tiny_model("mixtral"), progress=lambda _: None, num_shard=2)


def test_row_parallel_lora_partial_shrinks_sum_to_the_whole_delta() -> None:
    """Why a row-parallel layer's LoRA needs no collective of its own: each shard's delta with
    its columns of A and all of B, summed by the layer's all-reduce, is the unsharded delta."""
    _, args = read_config(tiny_model("llama"))
    torch.manual_seed(0)
    q = args.num_heads * args.head_dim
    f64 = torch.float64
    x, a, b = torch.randn(5, q, dtype=f64), torch.randn(8, q, dtype=f64), torch.randn(64, 8, dtype=f64)
    parts = []
    for rank in range(2):
        plan = ShardPlan(rank, 2, args)
        a_s, b_s = plan.cut_lora("model.layers.0.self_attn.o_proj", a, b)
        _, [(lo, hi)] = plan.segments("o_proj")  # type: ignore[misc]
        assert b_s is b and a_s.shape == (8, q // 2)
        parts.append((x[:, lo:hi] @ a_s.T) @ b_s.T)
    torch.testing.assert_close(parts[0] + parts[1], (x @ a.T) @ b.T)


def test_a_checkpoint_tensor_of_the_wrong_full_size_is_refused_not_sliced(tmp_path: Path) -> None:
    """A shard reads only its rows of q_proj: a tensor with extra rows would still give a slice of
    the expected shape, so the full size is checked before slicing."""
    from safetensors.torch import load_file, save_file

    source = tiny_model("llama")
    for item in source.iterdir():
        if item.name != "model.safetensors" and item.is_file():
            shutil.copy(item, tmp_path / item.name)
    tensors = load_file(source / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = torch.cat([tensors[name], tensors[name][:16]])
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"q_proj.weight has shape \(80, 64\), expected 64 along dim 0"):
        Engine.from_pretrained(tmp_path, progress=lambda _: None, num_shard=2)


async def test_idle_heartbeats_keep_the_shards_in_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle replica's heartbeats (which keep workers inside the collective timeout) are
    messages too: serving after many of them still gives the oracle's tokens."""
    from lorafleet.runtime.distributed import runner

    monkeypatch.setattr(runner, "HEARTBEAT_SECONDS", 0.2)
    with engine_for("llama", dtype="float32", num_shard=2) as engine:
        sharded = engine.loop.runner
        assert isinstance(sharded, runner.ShardedRunner)
        while sharded.heartbeats < 5:
            await asyncio.sleep(0.1)
        [request] = _requests(engine)[2:3]
        [got] = await _staggered(engine, [request])
    assert got == oracle_greedy("llama", list(request.prompt), request.adapter_id, NUM_TOKENS)
