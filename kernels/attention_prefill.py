"""Triton varlen causal prefill over the paged cache: flash-attention's online softmax, no mask.

S chunks are packed in q [T, H, D] (`cu_seqlens_q`); query j of chunk s sits at position
start_pos[s] + j and sees keys 0..that position (within the sliding window), read through the
chunk's block table from the cache, where this step's keys were already written (chunked prefill
and prefix reuse work unchanged: start_pos > 0 just means earlier keys are cached).

Grid (tiles, KVH). A tile is BLOCK_Q query tokens of one chunk x the BLOCK_G query heads sharing
a KV head: BLOCK_Q * BLOCK_G rows of tl.dot, so each K/V tile is loaded once per KV head. The
tile list needs no metadata and no host sync: chunk s owns tile ids starting at
`cu_seqlens_q[s] // BLOCK_Q + s` (strictly increasing in s, and leaving room for its
ceil(n_s / BLOCK_Q) tiles), so `cdiv(T, BLOCK_Q) + S` programs cover every chunk and each finds
its chunk by binary search over cu_seqlens_q; ids in the gaps exit at once. Keys are visited
from the first one visible to the tile's first query to its last query's position; the
visibility test is per (row, key), with an online softmax that tolerates rows that see nothing
yet (sliding window).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from lorafleet.kernels.attention import _attend_tile, is_interpreting, softmax_factors
from lorafleet.kernels.attention_config import (
    PrefillConfig,
    cdiv,
    device_limits,
    dot_element_size,
    prefill_config,
)


@triton.jit
def _find_chunk(cu_seqlens_ptr, num_seqs, pid_t, BLOCK_Q: tl.constexpr):
    """The last chunk s whose first tile id, cu_seqlens[s] // BLOCK_Q + s, is <= pid_t (binary
    search: those ids strictly increase with s)."""
    left = 0
    right = num_seqs - 1
    while left < right:
        mid = (left + right + 1) // 2
        fits = tl.load(cu_seqlens_ptr + mid) // BLOCK_Q + mid <= pid_t
        left = tl.where(fits, mid, left)
        right = tl.where(fits, right, mid - 1)
    return left


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,  # q, out [T, H, D]
    cu_seqlens_ptr, start_pos_ptr, block_tables_ptr,  # [S + 1], [S], [S, max_blocks]
    num_seqs, qk_scale, soft_cap, cap_log2, window, max_context,
    stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_tb,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFT_CAP: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_kvh = tl.program_id(1)
    seq = _find_chunk(cu_seqlens_ptr, num_seqs, pid_t, BLOCK_Q)
    q_begin = tl.load(cu_seqlens_ptr + seq)
    length = tl.load(cu_seqlens_ptr + seq + 1) - q_begin
    first_token = (pid_t - (q_begin // BLOCK_Q + seq)) * BLOCK_Q
    if first_token >= length:  # an id in the gap after this chunk's tiles
        return
    start = tl.load(start_pos_ptr + seq)

    BLOCK_M: tl.constexpr = BLOCK_Q * BLOCK_G
    offs_m = tl.arange(0, BLOCK_M)
    token = first_token + offs_m // BLOCK_G  # [BLOCK_M] query token within the chunk
    head = pid_kvh * GROUP + offs_m % BLOCK_G
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    mask_m = (token < length) & (offs_m % BLOCK_G < GROUP)
    rows = (q_begin + token).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(q_ptr + rows[:, None] + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    q_pos = start + token  # [BLOCK_M]
    key_end = tl.minimum(start + tl.minimum(first_token + BLOCK_Q, length), max_context)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(start + first_token - window + 1, 0)

    table = block_tables_ptr + seq * stride_tb  # S x max_blocks fits int32
    k_head = k_cache_ptr + pid_kvh * stride_kh
    v_head = v_cache_ptr + pid_kvh * stride_vh
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range((lo // BLOCK_N) * BLOCK_N, key_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        loadable = (offs_n >= lo) & (offs_n < key_end)
        visible = loadable[None, :] & (offs_n[None, :] <= q_pos[:, None])  # causal
        if HAS_WINDOW:
            visible = visible & (offs_n[None, :] > q_pos[:, None] - window)
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, k_head, v_head, table, offs_n, loadable, visible,
            offs_d, mask_d, qk_scale, soft_cap, cap_log2, stride_kb, stride_kt, stride_vb, stride_vt,
            BLOCK_SIZE, HAS_SOFT_CAP, DOT_FP32,
        )
    result = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out_rows = (q_begin + token).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(out_ptr + out_rows[:, None] + offs_d[None, :], result.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])


def choose_prefill_config(q: torch.Tensor, k_cache: torch.Tensor, **forced: int | None) -> PrefillConfig:
    _, num_heads, head_dim = q.shape
    return prefill_config(
        group=num_heads // k_cache.shape[2], head_dim=head_dim,
        elem=dot_element_size(q.dtype, is_interpreting() or q.dtype == torch.float32),
        limits=device_limits(q.device), **forced,
    )


def paged_prefill_attention(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    out: torch.Tensor,  # [T, H, D]
    *,
    cu_seqlens_q: torch.Tensor,  # [S + 1]
    start_pos: torch.Tensor,  # [S]
    block_tables: torch.Tensor,  # [S, max_blocks]
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    config: PrefillConfig | None = None,  # None: by rule; tests force small tiles
) -> torch.Tensor:
    """Launches the prefill kernel for inputs already checked by `lorafleet.kernels`."""
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = start_pos.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    config = config or choose_prefill_config(q, k_cache)
    grid = (cdiv(num_tokens, config.block_q) + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, cu_seqlens_q, start_pos, block_tables,
        num_seqs, *softmax_factors(scale, soft_cap), sliding_window or 0, block_tables.shape[1] * block_size,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_G=config.block_g, BLOCK_Q=config.block_q, BLOCK_N=config.block_n, BLOCK_D=config.block_d,
        HAS_WINDOW=sliding_window is not None, HAS_SOFT_CAP=soft_cap is not None,
        DOT_FP32=is_interpreting() or q.dtype == torch.float32,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out
