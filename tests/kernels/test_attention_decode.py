"""Paged decode attention (Triton in the interpreter on a CPU, and the torch path) vs the reference.

Every cache slot a query may not see holds NaN and unused block-table entries point at NaN blocks,
-1 or past the pool (`attention_cases`), so reading one invisible key or value fails the test.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import attention_reference, torch_attention

from tests.kernels.attention_cases import assert_close_to_reference, decode_problem

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (block_size, H, KVH, D, dtype, sliding_window, soft_cap)
CASES = {
    "mha_bs16_fp32": (16, 2, 2, 32, F32, None, None),
    "gqa2_bs8_fp16": (8, 4, 2, 32, F16, None, None),
    "gqa4_bs16_bf16": (16, 8, 2, 32, BF16, None, None),
    "window_inside_context_fp32": (8, 4, 2, 32, F32, 5, None),
    "window_longer_than_context_fp16": (16, 4, 1, 32, F16, 1000, None),
    "soft_cap_fp32": (16, 4, 2, 32, F32, None, 2.0),
    "window_soft_cap_gqa4_bs8_bf16": (8, 8, 2, 32, BF16, 9, 1.5),
    "head_dim_80_fp16": (16, 4, 2, 80, F16, None, None),
}


def ragged_contexts(block_size: int) -> list[int]:
    """1 token, a block minus one, exactly a block, several blocks, an empty (padded) row."""
    return [1, block_size - 1, block_size, 3 * block_size + 5, 2 * block_size + 1, 0]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decode_matches_reference_on_ragged_contexts(case: tuple, backend: str, device) -> None:
    block_size, heads, kv_heads, head_dim, dtype, window, cap = case
    problem = decode_problem(ragged_contexts(block_size), block_size=block_size, num_heads=heads,
                             num_kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, device=device,
                             sliding_window=window, soft_cap=cap)
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    actual = kernels.paged_decode_attention(*problem.args, **problem.options)
    assert_close_to_reference(actual, expected)
    assert torch.equal(actual[-1], torch.zeros_like(actual[-1]))  # empty context: zeros


@pytest.mark.parametrize("window", [None, 20], ids=["no_window", "window_20"])
def test_every_split_k_partition_size_gives_the_unsplit_result(window: int | None, triton_backend: str,
                                                               device) -> None:
    from lorafleet.kernels import attention

    problem = decode_problem([53, 7, 40, 0], block_size=8, num_heads=4, num_kv_heads=2, head_dim=32,
                             dtype=F32, device=device, sliding_window=window)
    q, k_cache, v_cache, tables, lens = problem.args
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    results = {}
    for partition in (None, 16, 32, 48):
        config = attention.choose_decode_config(q, k_cache, tables, partition_size=partition or 10**6,
                                                block_n=16)
        assert config.is_split == (partition is not None)
        results[partition] = attention.paged_decode_attention(
            q, k_cache, v_cache, tables, lens, torch.empty_like(q), config=config, **problem.options)
        assert_close_to_reference(results[partition], expected)
    for partition in (16, 32, 48):
        torch.testing.assert_close(results[partition], results[None], atol=1e-6, rtol=1e-6)


def test_long_context_of_one_sequence_is_split_by_the_rule(triton_backend: str, device) -> None:
    from lorafleet.kernels import attention

    problem = decode_problem([600], block_size=16, num_heads=4, num_kv_heads=2, head_dim=32, dtype=F16,
                             device=device, soft_cap=3.0)
    q, k_cache, _, tables, _ = problem.args
    assert attention.choose_decode_config(q, k_cache, tables).is_split  # 2 programs cannot fill a device
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    first = kernels.paged_decode_attention(*problem.args, **problem.options)
    assert_close_to_reference(first, expected)
    again = kernels.paged_decode_attention(*problem.args, **problem.options)
    assert torch.equal(again, first)  # deterministic: no atomics


def test_strided_q_and_out_views_of_fused_buffers(backend: str, device) -> None:
    problem = decode_problem([9, 30, 1], block_size=8, num_heads=4, num_kv_heads=2, head_dim=32, dtype=F16,
                             device=device)
    qkv = torch.randn(3, (4 + 2 * 2) * 32, device=device).to(F16)  # rows of a fused q|k|v projection
    q = qkv[:, : 4 * 32].view(3, 4, 32)
    qkv[:, : 4 * 32] = problem.q.reshape(3, -1)
    wide_out = torch.full((3, 4, 64), float("nan"), dtype=F16, device=device)
    out = wide_out[:, :, :32]  # strided in dims 0 and 1
    _, k_cache, v_cache, tables, lens = problem.args
    result = kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, out=out, **problem.options)
    assert result.data_ptr() == out.data_ptr()
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    assert_close_to_reference(out, expected)
    assert torch.isnan(wide_out[:, :, 32:]).all()  # nothing written beside the view


@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
def test_every_served_head_dim(head_dim: int, backend: str, device) -> None:
    problem = decode_problem([1, 20, 37], block_size=16, num_heads=4, num_kv_heads=2, head_dim=head_dim,
                             dtype=F16, device=device, sliding_window=30)
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    assert_close_to_reference(kernels.paged_decode_attention(*problem.args, **problem.options), expected)


def test_an_empty_batch_returns_the_empty_output(backend: str, device) -> None:
    problem = decode_problem([5], block_size=8, num_heads=2, num_kv_heads=1, head_dim=16, dtype=F32,
                             device=device)
    q, k_cache, v_cache, tables, lens = problem.args
    out = kernels.paged_decode_attention(q[:0], k_cache, v_cache, tables[:0], lens[:0], **problem.options)
    assert out.shape == (0, 2, 16)


def test_torch_path_cuts_the_batch_into_groups_when_the_gather_is_large(monkeypatch, device) -> None:
    monkeypatch.setattr(torch_attention, "GATHER_ELEMENTS", 2 * 8 * 16)  # about one sequence at a time
    problem = decode_problem([17, 3, 24, 8, 0, 12], block_size=8, num_heads=4, num_kv_heads=1, head_dim=16,
                             dtype=F32, device=torch.device("cpu"), sliding_window=10, soft_cap=5.0)
    out = torch_attention.paged_decode_attention(*problem.args, torch.empty_like(problem.q),
                                                 **problem.options)
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    assert_close_to_reference(out, expected)


def test_all_empty_contexts_give_zeros(backend: str, device) -> None:
    problem = decode_problem([0, 0], block_size=8, num_heads=2, num_kv_heads=2, head_dim=16, dtype=BF16,
                             device=device)
    out = torch.full_like(problem.q, float("nan"))
    kernels.paged_decode_attention(*problem.args, out=out, **problem.options)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU: runs in gpu_check")
def test_decode_replays_from_a_cuda_graph_with_new_context_lengths(triton_backend: str, device) -> None:
    """Capture fails on any host sync; the grid depends on (B, max_blocks) only, so one graph serves
    every step of a batch bucket: new lengths are written into the captured tensor and replayed."""
    problem = decode_problem([700, 300, 5], block_size=16, num_heads=8, num_kv_heads=2, head_dim=64,
                             dtype=BF16, device=device, soft_cap=30.0)  # 720 tokens wide: split-K
    q, k_cache, v_cache, tables, lens = problem.args
    out = torch.empty_like(q)

    def step() -> None:
        kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, out=out, **problem.options)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compile outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for new_lens in ([700, 300, 5], [650, 1, 0]):  # shorter contexts stay inside the written keys
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        assert_close_to_reference(out, attention_reference.paged_decode_attention(*problem.args,
                                                                                  **problem.options))
