"""Triton paged decode attention: one query token per sequence, K/V read from the blocks in place.

Grid (B, KVH, P): one program per sequence, KV head and context partition. The G query heads that
share a KV head are the rows of one tile (padded to 16 for tl.dot), so each K/V block is read once
per KV head whatever the GQA ratio. Keys are gathered BLOCK_N at a time through the block table
(token i of a sequence lives at `block_table[i // block_size]`, offset `i % block_size`), with an
online softmax in fp32 (exp2, log2(e) folded into the scale).

P = 1: the program divides by its sum and writes the output. P > 1 (split-K, flash-decoding): each
program writes its partition's running max, sum and unnormalised output in fp32, and
`_decode_reduce_kernel` (grid B, H) rescales and sums them. Positions outside `[lo, ctx)` (lo = the
sliding window's first visible key) are never loaded: block-table entries past a sequence's
context, or wholly before its window, may hold anything.

Launch parameters come from `attention_config` rules; the grid depends on (B, max_blocks) only, so
a CUDA graph can capture it. No host synchronisation.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from lorafleet.kernels.attention_config import (
    DecodeConfig,
    decode_config,
    device_limits,
    dot_element_size,
)

LOG2E = math.log2(math.e)


@triton.jit
def _tanh(x):
    # exp-based: libdevice's tanh is not available to the CPU interpreter; saturates to +-1
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _attend_tile(
    q, m_i, l_i, acc,  # q [M, BLOCK_D]; running max [M], sum [M], output [M, BLOCK_D] in fp32
    k_head, v_head, table, offs_n,  # this head's cache, the sequence's block table, keys [BLOCK_N]
    loadable, visible,  # [BLOCK_N] keys that may be read; [M or 1, BLOCK_N] keys each row sees
    offs_d, mask_d, qk_scale, soft_cap, cap_log2,
    stride_kb, stride_kt, stride_vb, stride_vt,
    BLOCK_SIZE: tl.constexpr, HAS_SOFT_CAP: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """One tile of keys: K/V gathered through the block table in place, online-softmax update.
    A row that sees no key yet keeps max -inf and adds nothing (m_safe avoids -inf - -inf)."""
    blocks = tl.load(table + offs_n // BLOCK_SIZE, mask=loadable, other=0).to(tl.int64)
    slots = offs_n % BLOCK_SIZE
    kv_mask = loadable[:, None] & mask_d[None, :]
    k = tl.load(k_head + (blocks * stride_kb + slots * stride_kt)[:, None] + offs_d[None, :], mask=kv_mask,
                other=0.0)  # [BLOCK_N, BLOCK_D]
    if DOT_FP32:
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))  # [M, BLOCK_N], fp32 accumulation
    s = s * qk_scale
    if HAS_SOFT_CAP:
        s = cap_log2 * _tanh(s / soft_cap)  # cap * tanh(s / cap), times log2(e) for exp2
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    v = tl.load(v_head + (blocks * stride_vb + slots * stride_vt)[:, None] + offs_d[None, :], mask=kv_mask,
                other=0.0)
    if DOT_FP32:
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + pv


@triton.jit
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,  # q [B, H, D]
    out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr,  # part_out [B, H, P, D], part_max/sum [B, H, P]
    qk_scale, soft_cap, cap_log2, window, max_context, partition_size,
    stride_qb, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_tb,
    stride_ob, stride_oh,
    stride_pb, stride_ph, stride_pp,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFT_CAP: tl.constexpr, IS_SPLIT: tl.constexpr,
    DOT_FP32: tl.constexpr,  # convert to fp32 before tl.dot (interpreter; fp32 inputs)
):
    pid_b = tl.program_id(0)
    pid_kvh = tl.program_id(1)
    pid_p = tl.program_id(2)
    ctx = tl.minimum(tl.load(context_lens_ptr + pid_b), max_context)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    part_start = pid_p * partition_size
    part_end = tl.minimum(part_start + partition_size, ctx)
    start = tl.maximum(part_start, (lo // BLOCK_N) * BLOCK_N)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = pid_kvh * GROUP + offs_g
    if start >= part_end:  # no visible key here: past the context, or before the window
        if not IS_SPLIT:  # an empty context (a padded batch row) gives zeros
            zero = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
            out = out_ptr + pid_b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
            tl.store(out, zero.to(out_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
        return

    q = tl.load(q_ptr + pid_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]
    if DOT_FP32:
        q = q.to(tl.float32)
    table = block_tables_ptr + pid_b.to(tl.int64) * stride_tb
    k_head = k_cache_ptr + pid_kvh * stride_kh
    v_head = v_cache_ptr + pid_kvh * stride_vh
    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    for n0 in range(start, part_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        loadable = (offs_n >= lo) & (offs_n < part_end)
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, k_head, v_head, table, offs_n, loadable, loadable[None, :],
            offs_d, mask_d, qk_scale, soft_cap, cap_log2, stride_kb, stride_kt, stride_vb, stride_vt,
            BLOCK_SIZE, HAS_SOFT_CAP, DOT_FP32,
        )

    out_mask = mask_g[:, None] & mask_d[None, :]
    if IS_SPLIT:
        part = pid_b * stride_pb + heads * stride_ph + pid_p * stride_pp  # [BLOCK_G]
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=out_mask)
        tl.store(part_max_ptr + part, m_i, mask=mask_g)
        tl.store(part_sum_ptr + part, l_i, mask=mask_g)
    else:
        out = out_ptr + pid_b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(out, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_max_ptr, part_sum_ptr, context_lens_ptr, out_ptr,
    window, max_context, partition_size,
    stride_pb, stride_ph, stride_pp,
    stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_WINDOW: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    ctx = tl.minimum(tl.load(context_lens_ptr + pid_b), max_context)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    # exactly the partitions `_decode_kernel` wrote: those overlapping [lo, ctx)
    first = lo // partition_size
    last = tl.cdiv(ctx, partition_size)
    base = pid_b * stride_pb + pid_h * stride_ph
    m = tl.full((), float("-inf"), dtype=tl.float32)
    for p in range(first, last):
        m = tl.maximum(m, tl.load(part_max_ptr + base + p * stride_pp))
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    total = tl.zeros((), dtype=tl.float32)
    for p in range(first, last):
        weight = tl.exp2(tl.load(part_max_ptr + base + p * stride_pp) - m)
        total += weight * tl.load(part_sum_ptr + base + p * stride_pp)
        acc += weight * tl.load(part_out_ptr + (base + p * stride_pp) * HEAD_DIM + offs_d, mask=mask_d,
                                other=0.0)
    result = tl.where(total > 0, acc / tl.maximum(total, 1e-30), 0.0)  # empty context: zeros
    out = out_ptr + pid_b * stride_ob + pid_h * stride_oh + offs_d
    tl.store(out, result.to(out_ptr.dtype.element_ty), mask=mask_d)


def is_interpreting() -> bool:
    """True when TRITON_INTERPRET=1 made these kernels run in Triton's CPU interpreter."""
    return bool(triton.knobs.runtime.interpret)


def softmax_factors(scale: float, soft_cap: float | None) -> tuple[float, float, float]:
    """(qk_scale, soft_cap, cap_log2) for the kernels, which take exp2: without soft-capping
    log2(e) is folded into the scale; with it, the scaled score goes through tanh first and
    log2(e) multiplies the cap."""
    if soft_cap is None:
        return scale * LOG2E, 1.0, LOG2E
    return scale, float(soft_cap), float(soft_cap) * LOG2E


def choose_decode_config(
    q: torch.Tensor, k_cache: torch.Tensor, block_tables: torch.Tensor, **forced: int | None
) -> DecodeConfig:
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    return decode_config(
        batch=batch, num_kv_heads=num_kv_heads, group=num_heads // num_kv_heads, head_dim=head_dim,
        max_context=block_tables.shape[1] * block_size,
        elem=dot_element_size(q.dtype, is_interpreting() or q.dtype == torch.float32),
        limits=device_limits(q.device), **forced,
    )


def paged_decode_attention(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32/int64
    context_lens: torch.Tensor,  # [B] int32/int64
    out: torch.Tensor,  # [B, H, D]
    *,
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    config: DecodeConfig | None = None,  # None: by rule; tests force split-K and tiles
) -> torch.Tensor:
    """Launches the decode kernel (and the reduction when split) for inputs already checked."""
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if batch == 0:
        return out
    config = config or choose_decode_config(q, k_cache, block_tables)
    max_context = block_tables.shape[1] * block_size
    window = sliding_window or 0
    parts = config.num_partitions
    if config.is_split:
        part_out = torch.empty(batch, num_heads, parts, head_dim, dtype=torch.float32, device=q.device)
        part_max = torch.empty(batch, num_heads, parts, dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
    else:  # not read: the kernel writes `out` directly
        part_out = part_max = part_sum = out
    _decode_kernel[(batch, num_kv_heads, parts)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_out, part_max, part_sum,
        *softmax_factors(scale, soft_cap), window, max_context, config.partition_size,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        num_heads * parts, parts, 1,
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_G=config.block_g, BLOCK_N=config.block_n, BLOCK_D=config.block_d,
        HAS_WINDOW=sliding_window is not None, HAS_SOFT_CAP=soft_cap is not None,
        IS_SPLIT=config.is_split, DOT_FP32=is_interpreting() or q.dtype == torch.float32,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if config.is_split:
        _decode_reduce_kernel[(batch, num_heads)](
            part_out, part_max, part_sum, context_lens, out,
            window, max_context, config.partition_size,
            num_heads * parts, parts, 1,
            out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=config.block_d, HAS_WINDOW=sliding_window is not None,
            num_warps=1 if config.block_d <= 128 else 2,
        )
    return out

