"""Sizing the KV cache by measurement: the plan from a device's numbers, and the steps measured.

`memory.plan_memory` is pure: it takes the device's total and free memory and the activations the
profiling steps measured, and is checked here with the numbers of devices we do not have (an L4's
24 GB, a nearly full card). The profiling and warm-up steps themselves run on the CPU through the
CUDA path's code (the kernels' torch launchers): they must run, touch only the null block and
give the borrowed adapter slot back.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet.runtime.engine import Engine, EngineError, memory, setup, warmup
from lorafleet.runtime.engine.memory import Activations, DeviceMemory, MemoryPlan, plan_memory

from tests.fixtures import tiny_model
from tests.runtime.oracle import engine_for

GiB, MiB = 1 << 30, 1 << 20
L4 = DeviceMemory(total=24 * GiB, free=24 * GiB - 16 * GiB - 600 * MiB)  # after 8B bf16 weights, context
PER_BLOCK = 2 * MiB  # Llama-3-8B, bf16, 16 tokens: 32 layers x 2 x 16 x 8 x 128 x 2 bytes


def test_the_reserve_is_activations_graphs_and_fragmentation_and_the_kv_cache_gets_the_rest() -> None:
    activations = Activations(mixed=900 * MiB, decode=300 * MiB)
    plan = plan_memory(L4, activations, kv_bytes_per_block=PER_BLOCK, num_graphs=18)
    fragmentation = int(0.03 * 24 * GiB)
    assert plan.activations == 900 * MiB  # the larger step's segments, kept by the allocator
    assert plan.graphs == 300 * MiB + 18 * memory.GRAPH_OVERHEAD  # the largest bucket + per graph
    assert plan.fragmentation == fragmentation
    assert plan.reserve == plan.activations + plan.graphs + plan.fragmentation
    left = L4.free - plan.reserve
    assert plan.num_kv_blocks == left // PER_BLOCK - 1  # the runner's null block set aside
    assert plan.num_kv_blocks * PER_BLOCK + PER_BLOCK + plan.reserve <= L4.free


def test_without_graphs_no_pool_is_reserved_and_small_devices_keep_the_minimum_margin() -> None:
    small = DeviceMemory(total=4 * GiB, free=2 * GiB)
    plan = plan_memory(small, Activations(mixed=100 * MiB, decode=400 * MiB), kv_bytes_per_block=PER_BLOCK,
                       num_graphs=0)
    assert plan.graphs == 0 and plan.activations == 400 * MiB
    assert plan.fragmentation == memory.MIN_FRAGMENTATION  # 3 % of 4 GiB is less
    assert plan.num_kv_blocks == (2 * GiB - 400 * MiB - memory.MIN_FRAGMENTATION) // PER_BLOCK - 1


def test_a_device_without_room_for_one_request_is_refused_with_the_reserve_spelled_out() -> None:
    full = DeviceMemory(total=24 * GiB, free=1 * GiB)
    plan = plan_memory(full, Activations(mixed=600 * MiB, decode=200 * MiB), kv_bytes_per_block=PER_BLOCK,
                       num_graphs=10)
    assert plan.num_kv_blocks == 0
    config = engine_for("mistral").config
    with pytest.raises(EngineError, match=r"after a reserve of \d+ MiB \(activations 600, CUDA graphs 220"):
        setup.with_memory_plan(config, plan)


def test_info_reports_the_planned_reserve() -> None:
    engine = engine_for("mistral")
    plan = MemoryPlan(num_kv_blocks=64, activations=3 * MiB, graphs=2 * MiB, fragmentation=MiB)
    config = setup.with_memory_plan(engine.config, plan)
    sized = Engine(config, engine.loop.runner.model, engine.tokenizer)
    assert sized.info.num_kv_blocks == 64 and sized.info.memory.reserve == 6 * MiB
    assert engine.info.memory.reserve == 0  # the CPU keeps none


def _kernel_runner(**options: object):  # type: ignore[no-untyped-def]
    """A runner as at start on CUDA: no adapter placed yet, the CUDA path's code (torch launchers)."""
    runner = Engine.from_pretrained(tiny_model("mistral"), progress=lambda _: None, **options).loop.runner
    runner.kernel_attention = True
    return runner


def test_the_profiling_steps_are_the_largest_steps_and_run_on_the_null_block_only() -> None:
    runner = _kernel_runner(max_batch_prefill_tokens=40, max_batch_size=6, max_total_tokens=96, block_size=8,
                            num_kv_blocks=16)
    steps = warmup.profile_steps(runner)
    (mixed, logprobs), (decode, _) = steps
    assert logprobs and sum(item.num_tokens for item in mixed) == 40 + 5 and len(mixed) == 6
    assert len(decode) == 6 and all(item.num_tokens == 1 for item in decode)
    assert all(item.seq.num_computed + item.num_tokens <= 96 for items, _ in steps for item in items)
    before = runner.kv_cache[:, :, : runner.null_block].clone()
    with warmup.profiling_adapter(runner):
        tables = runner.page_tables
        assert all(tables.targets(group, warmup.PROFILE_SLOT) for group in tables.groups)
        for items, prompt_logprobs in steps:
            warmup.run_step(runner, items, prompt_logprobs=prompt_logprobs)
    assert torch.equal(runner.kv_cache[:, :, : runner.null_block], before)
    assert not any(runner.page_tables.targets(g, warmup.PROFILE_SLOT) for g in runner.page_tables.groups)


def test_the_warm_up_steps_run_and_leave_the_real_blocks_alone() -> None:
    runner = _kernel_runner(max_batch_size=40, block_size=8, num_kv_blocks=80, max_loaded_adapters=4)
    before = runner.kv_cache[:, :, : runner.null_block].clone()
    steps = warmup.warm_up_steps(runner)
    assert len(steps) == 12  # six shapes, with and without an adapter
    for items in steps:
        warmup.run_step(runner, items)
    assert torch.equal(runner.kv_cache[:, :, : runner.null_block], before)
