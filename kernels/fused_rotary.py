"""Fused rotary position embedding: q and k rotated in place, cos/sin computed in the kernel.

The eager module (`lorafleet.runtime.layers.rotary.RotaryEmbedding`) builds cos/sin from the
positions in every layer (a dozen small kernels) and then rotates q and k with `cat`s and
`rotate_half` copies. Here one program per (token, q or k) computes the angles `pos * inv_freq` in
float32 (the same product torch computes), their cos and sin times the attention factor, rounded
to the activations' dtype as the eager code rounds them, and rotates every head of that token in
registers, writing back in place (q and k may be strided views of the fused q|k|v output):

    out[:half] = x[:half] * cos - x[half:R] * sin      out[half:R] = x[half:R] * cos + x[:half] * sin

each product and the sum rounded to the dtype, as `q * cos + rotate_half(q) * sin` does; dims
past R (partial rotary) are left alone. LongRoPE passes its second set of frequencies and the
position from which it applies (per token, as the eager module does).

Reference: the eager module (`tests/kernels/test_fused_rotary.py`, interpreter and CUDA). The
launcher checks nothing: the runtime calls it with its own consistent tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# The q and k branches pick their head count and strides at run time: none may be specialised into a
# constant (Triton turns an int argument equal to 1 into one, e.g. one KV head in Gemma 3 1B), or the
# two branches would yield values of different types.
@triton.jit(do_not_specialize=["num_q_heads", "num_k_heads", "stride_qt", "stride_qh", "stride_kt",
                               "stride_kh"])
def _rotary_kernel(
    q_ptr, k_ptr, positions_ptr, inv_freq_ptr, long_inv_freq_ptr,  # q [T, H, D], k [T, KVH, D]
    num_q_heads, num_k_heads, half, long_from, attention_factor,
    stride_qt, stride_qh, stride_kt, stride_kh,
    HAS_LONG: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    which = tl.program_id(1)  # 0: q, 1: k
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < half
    position = tl.load(positions_ptr + token)
    inv_freq = tl.load(inv_freq_ptr + offs_r, mask=mask_r, other=0.0)
    if HAS_LONG:
        long_inv_freq = tl.load(long_inv_freq_ptr + offs_r, mask=mask_r, other=0.0)
        inv_freq = tl.where(position >= long_from, long_inv_freq, inv_freq)
    angle = position.to(tl.float32) * inv_freq  # [BLOCK_R]
    if which == 0:
        base, num_heads, stride_t, stride_h = q_ptr, num_q_heads, stride_qt, stride_qh
    else:
        base, num_heads, stride_t, stride_h = k_ptr, num_k_heads, stride_kt, stride_kh
    dtype = base.dtype.element_ty
    cos = (tl.cos(angle) * attention_factor).to(dtype).to(tl.float32)[None, :]
    sin = (tl.sin(angle) * attention_factor).to(dtype).to(tl.float32)[None, :]
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h < num_heads)[:, None] & mask_r[None, :]
    first = base + token * stride_t + offs_h[:, None] * stride_h + offs_r[None, :]  # [BLOCK_H, BLOCK_R]
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + half, mask=mask, other=0.0).to(tl.float32)
    out1 = (x1 * cos).to(dtype).to(tl.float32) + (-x2 * sin).to(dtype).to(tl.float32)
    out2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    tl.store(first, out1.to(dtype), mask=mask)
    tl.store(first + half, out2.to(dtype), mask=mask)


def rotary_embedding(
    positions: torch.Tensor,  # [T] int32/int64
    q: torch.Tensor,  # [T, H, D], head_dim contiguous; rotated in place
    k: torch.Tensor,  # [T, KVH, D], likewise
    inv_freq: torch.Tensor,  # [R / 2] float32
    *,
    long_inv_freq: torch.Tensor | None = None,  # [R / 2] float32, LongRoPE's set for positions >= long_from
    long_from: int = 0,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # (q, k), the same tensors
    """Rotates the first R = 2 * len(inv_freq) dims of every head of q and k by position, in place."""
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return q, k
    half = inv_freq.shape[0]
    block_h = triton.next_power_of_2(max(q.shape[1], k.shape[1]))
    block_r = triton.next_power_of_2(half)
    _rotary_kernel[(num_tokens, 2)](
        q, k, positions, inv_freq, long_inv_freq if long_inv_freq is not None else inv_freq,
        q.shape[1], k.shape[1], half, int(long_from), float(attention_factor),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        HAS_LONG=long_inv_freq is not None, BLOCK_H=block_h, BLOCK_R=block_r,
        num_warps=4 if block_h * block_r <= 4096 else 8,
    )
    return q, k
