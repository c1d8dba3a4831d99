"""Continuous batching with a mix of adapters gives exactly the oracle's greedy tokens.

Requests are submitted at staggered times (each after the previous one has produced a few
tokens), so steps mix prefill chunks with decodes of other adapters.
"""

from __future__ import annotations

import asyncio

import pytest
from lorafleet.kernels import native_cpu, torch_lora
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams

from tests.fixtures import STANDARD_ADAPTERS
from tests.runtime.oracle import corpus_prompts, engine_for, oracle_greedy

NUM_TOKENS = 32
ADAPTERS = [None, "r8-qv", "r16-all", None, "r64-rslora", "r8-mlp-patterns", "r16-all"]
ARCHS = ["mistral", "llama", "qwen3", "phi3", "gemma2", "gemma3", "mixtral"]


async def _staggered(engine: Engine, requests: list[GenerationRequest]) -> list[list[int]]:
    outputs: list[list[int]] = [[] for _ in requests]
    started = [asyncio.Event() for _ in requests]

    async def run(i: int) -> None:
        async for event in engine.stream(requests[i]):
            outputs[i].append(event.token.id)
            if event.index == 3:
                started[i].set()
        started[i].set()

    tasks = []
    for i in range(len(requests)):
        tasks.append(asyncio.create_task(run(i)))
        await started[i].wait()  # the next request arrives while this one is decoding
    await asyncio.gather(*tasks)
    return outputs


def _requests(engine: Engine) -> list[GenerationRequest]:
    prompts = corpus_prompts(engine, len(ADAPTERS))
    params = SamplingParams(max_new_tokens=NUM_TOKENS, ignore_eos=True)
    return [GenerationRequest(p, params, adapter_id=a) for p, a in zip(prompts, ADAPTERS, strict=True)]


@pytest.mark.parametrize("arch", ARCHS)
async def test_staggered_mixed_adapter_batch_matches_peft_greedy_token_by_token(arch: str) -> None:
    assert len({a for a in ADAPTERS if a}) >= 3 and None in ADAPTERS
    with engine_for(arch, max_batch_prefill_tokens=16) as engine:  # 16: long prompts are chunked too
        requests = _requests(engine)
        outputs = await _staggered(engine, requests)
        assert engine.stats().batch_size == 0
    for request, got in zip(requests, outputs, strict=True):
        assert got == oracle_greedy(arch, list(request.prompt), request.adapter_id, NUM_TOKENS), (
            request.adapter_id
        )


@pytest.mark.parametrize("arch", ARCHS)
async def test_preemption_by_a_tiny_kv_pool_keeps_greedy_tokens_identical(arch: str) -> None:
    # 5 blocks of 16 tokens hold one or two of these ~56-token sequences: the rest get preempted.
    with engine_for(arch, max_total_tokens=64, num_kv_blocks=5, block_size=16) as engine:
        requests = _requests(engine)
        outputs = await _staggered(engine, requests)
        stats = engine.stats()
    assert stats.preemptions > 0
    assert stats.num_free_blocks == 5
    for request, got in zip(requests, outputs, strict=True):
        assert got == oracle_greedy(arch, list(request.prompt), request.adapter_id, NUM_TOKENS), (
            request.adapter_id
        )


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_seeded_sampling_repeats_exactly_alone_or_in_a_mixed_batch(arch: str) -> None:
    with engine_for(arch) as engine:
        prompts = corpus_prompts(engine, 4)
        sampled = [
            GenerationRequest(
                prompts[i],
                SamplingParams(
                    max_new_tokens=24,
                    temperature=0.9,
                    top_k=50,
                    top_p=0.95,
                    seed=1234 + i,
                    repetition_penalty=1.1,
                    ignore_eos=True,
                ),
                adapter_id=adapter,
            )
            for i, adapter in enumerate([None, "r8-qv", "r16-all", "r64-rslora"])
        ]
        alone = [engine.generate([request])[0] for request in sampled]
        greedy = [
            GenerationRequest(p, SamplingParams(max_new_tokens=8), adapter_id="r8-mlp-patterns")
            for p in prompts
        ]
        together = engine.generate(sampled + greedy)[: len(sampled)]
        unseeded = engine.generate(
            [GenerationRequest(prompts[0], SamplingParams(max_new_tokens=24, do_sample=True))]
        )
    for a, b in zip(alone, together, strict=True):
        assert [t.id for t in a.tokens] == [t.id for t in b.tokens]
        assert a.seed == b.seed is not None
    assert unseeded[0].seed is not None  # a random seed is drawn and reported back
    distinct = {tuple(t.id for t in r.tokens) for r in alone}
    assert len(distinct) == len(alone)


def test_standard_adapters_cover_ranks_and_targets() -> None:
    ranks = {spec.r for spec in STANDARD_ADAPTERS.values()}
    assert len(ranks) >= 3


@pytest.mark.skipif(native_cpu.lora_kernel() is None, reason="no CPU LoRA kernel built on this machine")
@pytest.mark.parametrize("arch", ["mistral", "qwen3"])
def test_decode_rows_through_the_cpu_lora_kernel_give_the_oracles_tokens(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planned form (forced: on these tiny weights the rule prefers the gathered one) sends each
    decode step's adapters to the CPU kernel in one call per layer; prefill stays on MKL."""
    kernel = native_cpu.lora_kernel()
    calls: list[int] = []

    class Counting:
        @staticmethod
        def lora_kernel():  # type: ignore[no-untyped-def]
            return Counting

        @staticmethod
        def lora_layer(out, x, firsts, *rest):  # type: ignore[no-untyped-def]
            calls.append(len(firsts))
            return kernel.lora_layer(out, x, firsts, *rest)  # type: ignore[union-attr]

    monkeypatch.setattr(torch_lora, "native_cpu", Counting)
    monkeypatch.setattr(torch_lora, "choose_path", lambda *args, **kwargs: torch_lora.GROUPED)
    adapters = [None, "r8-qv", "r16-all", "r64-rslora", "r8-qv", "r16-all", "r64-rslora", None]
    with engine_for(arch) as engine:
        prompts = corpus_prompts(engine, len(adapters))
        params = SamplingParams(max_new_tokens=NUM_TOKENS, ignore_eos=True)
        results = engine.generate([GenerationRequest(p, params, adapter_id=a)
                                   for p, a in zip(prompts, adapters, strict=True)])
    assert calls and max(calls) == 3  # the three adapters' decode rows, one kernel call per layer
    for prompt, adapter, result in zip(prompts, adapters, results, strict=True):
        expected = oracle_greedy(arch, list(prompt), adapter, NUM_TOKENS)
        assert [t.id for t in result.tokens] == expected, adapter
