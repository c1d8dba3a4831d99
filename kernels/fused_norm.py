"""Fused RMSNorm (optionally after a residual add) in one Triton kernel, rounded as torch rounds it.

The runtime's eager RMSNorm (`lorafleet.runtime.layers.norms`) is about eight kernels: cast, square,
mean, add eps, rsqrt, multiply, cast, scale. Here one program normalises one row in registers:

    offset 0 (Llama and kin):  out = weight * (x / rms(x)).to(dtype)        product rounded in dtype
    offset 1 (Gemma):          out = ((x / rms(x)) * (1 + weight)).to(dtype)   all in float32

and, with `residual`, first `x = x + residual` rounded to the dtype (the decoder's residual add), so
the sum is written once and normalised from the same rounded values the eager code would see.
Rows are indexed by two leading dims (tokens, heads) with their own strides, so q and k sliced out
of a fused q|k|v projection are normalised per head (Qwen3, Gemma 3) without a copy.

Reference: the eager module itself (`tests/kernels/test_fused_norm.py` compares them under
TRITON_INTERPRET=1 and on CUDA). The launcher checks nothing: the runtime's layers call it with
their own consistent tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 1 << 16  # a row must fit one program's registers (hidden sizes of today's models <= 16384)


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, sum_ptr, weight_ptr, out_ptr,  # x, residual [M0, M1, N]; sum, out [M0, M1, N]
    N, eps, offset,
    stride_x0, stride_x1, stride_r0, stride_r1, stride_s0, stride_s1, stride_o0, stride_o1,
    HAS_RESIDUAL: tl.constexpr, HAS_OFFSET: tl.constexpr, BLOCK: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64)
    row1 = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row0 * stride_x0 + row1 * stride_x1 + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row0 * stride_r0 + row1 * stride_r1 + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)  # torch's x + residual
        tl.store(sum_ptr + row0 * stride_s0 + row1 * stride_s1 + cols, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / N
    hidden = xf * tl.rsqrt(variance + eps)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_OFFSET:
        y = hidden * (offset + weight)
    else:
        y = hidden.to(x_ptr.dtype.element_ty).to(tl.float32) * weight
    tl.store(out_ptr + row0 * stride_o0 + row1 * stride_o1 + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _as_3d(t: torch.Tensor) -> torch.Tensor:
    """[..., N] as [M0, M1, N] without a copy: [N] -> [1, 1, N], [T, N] -> [T, 1, N], [T, H, N] as is."""
    if t.dim() == 1:
        return t[None, None]
    if t.dim() == 2:
        return t[:, None]
    return t


def _num_warps(block: int) -> int:
    return max(1, min(16, block // 512))


def rms_norm(
    x: torch.Tensor,  # [..., N] (1-3 dims), last dim contiguous
    weight: torch.Tensor,  # [N]
    eps: float,
    offset: float = 0.0,
) -> torch.Tensor:  # x's shape, contiguous
    """RMSNorm of each row of `x` (see the module docstring for the two forms)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, None, None, weight, out, eps, offset)
    return out


def add_rms_norm(
    x: torch.Tensor,  # [T, N], last dim contiguous
    residual: torch.Tensor,  # [T, N]
    weight: torch.Tensor,  # [N]
    eps: float,
    offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # (x + residual, rms_norm(x + residual)), both [T, N]
    """The decoder's `x = x + residual; h = norm(x)` in one kernel."""
    total = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out = torch.empty_like(total)
    _launch(x, residual, total, weight, out, eps, offset)
    return total, out


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    total: torch.Tensor | None,
    weight: torch.Tensor,
    out: torch.Tensor,
    eps: float,
    offset: float,
) -> None:
    width = x.shape[-1]
    block = triton.next_power_of_2(width)
    assert block <= MAX_BLOCK, f"rows of {width} elements exceed one program ({MAX_BLOCK})"
    x3, out3 = _as_3d(x), _as_3d(out)
    if x3.numel() == 0:
        return
    r3 = _as_3d(residual) if residual is not None else x3  # unread without HAS_RESIDUAL
    s3 = _as_3d(total) if total is not None else out3
    _rms_norm_kernel[(x3.shape[0], x3.shape[1])](
        x3, r3, s3, weight, out3,
        width, float(eps), float(offset),
        x3.stride(0), x3.stride(1), r3.stride(0), r3.stride(1),
        s3.stride(0), s3.stride(1), out3.stride(0), out3.stride(1),
        HAS_RESIDUAL=residual is not None, HAS_OFFSET=bool(offset), BLOCK=block,
        num_warps=_num_warps(block),
    )
