"""Varlen paged prefill (Triton in the interpreter on a CPU, and the torch path) vs the reference."""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import attention_reference, torch_attention

from tests.kernels.attention_cases import assert_close_to_reference, decode_problem, prefill_problem

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (start_pos, length) per packed chunk: a fresh prompt, a later chunk of a long prompt, a single
# token after a full block, an empty chunk, a chunk starting mid-block
CHUNKS = [(0, 7), (5, 20), (16, 1), (0, 0), (33, 12)]

# (block_size, H, KVH, D, dtype, sliding_window, soft_cap)
CASES = {
    "mha_bs16_fp32": (16, 2, 2, 32, F32, None, None),
    "gqa2_bs8_fp16": (8, 4, 2, 32, F16, None, None),
    "gqa4_bs16_bf16": (16, 8, 2, 32, BF16, None, None),
    "window_5_bs8_fp32": (8, 4, 2, 32, F32, 5, None),
    "window_longer_than_prompts_fp16": (16, 4, 1, 32, F16, 100, None),
    "soft_cap_gqa4_fp32": (16, 8, 2, 32, F32, None, 2.0),
    "window_and_soft_cap_bf16": (8, 4, 2, 32, BF16, 9, 1.5),
    "head_dim_80_fp16": (16, 2, 1, 80, F16, None, None),
    "head_dim_256_bf16": (16, 2, 1, 256, BF16, None, None),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_prefill_matches_reference_for_packed_chunks(case: tuple, backend: str, device) -> None:
    block_size, heads, kv_heads, head_dim, dtype, window, cap = case
    problem = prefill_problem(CHUNKS, block_size=block_size, num_heads=heads, num_kv_heads=kv_heads,
                              head_dim=head_dim, dtype=dtype, device=device, sliding_window=window,
                              soft_cap=cap)
    expected = attention_reference.paged_prefill_attention(*problem.args, **problem.kwargs)
    out = torch.full_like(problem.q, float("nan"))  # every row must be written
    actual = kernels.paged_prefill_attention(*problem.args, out=out, **problem.kwargs)
    assert actual.data_ptr() == out.data_ptr()
    assert_close_to_reference(actual, expected)


@pytest.mark.parametrize(("block_q", "block_n"), [(1, 16), (2, 16), (4, 32)])
def test_small_tiles_cover_every_chunk(block_q: int, block_n: int, triton_backend: str, device) -> None:
    """Many query tiles per chunk (the tile search over cu_seqlens_q) and many key tiles per query."""
    from lorafleet.kernels import attention_prefill

    problem = prefill_problem(CHUNKS + [(2, 3)], block_size=8, num_heads=4, num_kv_heads=2, head_dim=32,
                              dtype=F32, device=device, sliding_window=11)
    config = attention_prefill.choose_prefill_config(problem.q, problem.cache.k_cache, block_q=block_q,
                                                     block_n=block_n)
    out = torch.full_like(problem.q, float("nan"))
    attention_prefill.paged_prefill_attention(*problem.args, out, config=config, **problem.kwargs)
    expected = attention_reference.paged_prefill_attention(*problem.args, **problem.kwargs)
    assert_close_to_reference(out, expected)


def test_one_token_chunks_equal_decode(backend: str, device) -> None:
    contexts = [1, 9, 16, 30]
    problem = decode_problem(contexts, block_size=8, num_heads=4, num_kv_heads=2, head_dim=32, dtype=F32,
                             device=device, sliding_window=12, soft_cap=4.0)
    q, k_cache, v_cache, tables, lens = problem.args
    decoded = kernels.paged_decode_attention(*problem.args, **problem.options)
    prefilled = kernels.paged_prefill_attention(
        q, k_cache, v_cache, cu_seqlens_q=torch.arange(len(contexts) + 1, dtype=torch.int32, device=device),
        start_pos=lens - 1, block_tables=tables, **problem.options)
    torch.testing.assert_close(prefilled, decoded, atol=1e-5, rtol=1e-5)


def test_no_chunks_and_no_tokens(backend: str, device) -> None:
    problem = prefill_problem([(0, 0), (4, 0)], block_size=8, num_heads=2, num_kv_heads=1, head_dim=16,
                              dtype=F32, device=device)
    assert kernels.paged_prefill_attention(*problem.args, **problem.kwargs).shape == (0, 2, 16)


def test_torch_path_cuts_long_chunks_into_row_groups(monkeypatch) -> None:
    monkeypatch.setattr(torch_attention, "GATHER_ELEMENTS", 4 * 40)  # a few query rows at a time
    problem = prefill_problem([(0, 21), (10, 30)], block_size=8, num_heads=4, num_kv_heads=2, head_dim=16,
                              dtype=F32, device=torch.device("cpu"), sliding_window=13)
    out = torch_attention.paged_prefill_attention(*problem.args, torch.empty_like(problem.q),
                                                  **problem.kwargs)
    expected = attention_reference.paged_prefill_attention(*problem.args, **problem.kwargs)
    assert_close_to_reference(out, expected)
