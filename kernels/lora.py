"""Triton SGMV kernels: shrink (x·Aᵀ) and expand (·Bᵀ, scaled, added into out), two launches.

Work is cut by `LoraBatch` tiles: each program handles up to BLOCK_M rows that share one adapter
slot, so those rows share every load of that adapter's weights (SGMV). Decode batches (one or
few tokens per adapter) use 16-row tiles and split K across many programs so that each adapter's
A is streamed by many SMs at once (the BGMV case); prefill uses 64-row tiles. Unused tiles of
the fixed-length tile list return at once.

shrink: grid (tiles, SPLIT_K, R-blocks). Reads x once for all S slices (A is [L, S, R, K], so the
    slices are just S*R output columns) and writes fp32 partials [SPLIT_K, T, S*R] with plain
    stores, indexed by sorted row: no atomics, no memset, deterministic.
expand: grid (tiles, N-blocks of the widest slice, S). Sums the split-K partials of its slice,
    scales them in fp32, multiplies by B and adds into `out` with a single rounding.

Configs are chosen by explicit rules in `_shrink_config` / `_expand_config` (multi-config
`@triton.autotune` cannot run on a CPU-only machine, where CI interprets these kernels).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from lorafleet.kernels.batch import DECODE_BLOCK_M, LoraBatch


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, partial_ptr,  # x [T, K], a [L, S, R, K], partial [SPLIT_K, T, S*R] fp32
    sorted_tokens_ptr, tile_slot_ptr, tile_start_ptr, tile_end_ptr,
    K, RANK, SR, k_per_split,
    stride_xt, stride_xk,
    stride_al, stride_as, stride_ar, stride_ak,
    stride_ps, stride_pm,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,  # convert to fp32 before tl.dot (interpreter; exact fp32 inputs)
):
    pid_tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_r = tl.program_id(2)
    slot = tl.load(tile_slot_ptr + pid_tile)
    if slot < 0:
        return
    row_start = tl.load(tile_start_ptr + pid_tile)
    row_end = tl.load(tile_end_ptr + pid_tile)
    offs_m = row_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < row_end
    tokens = tl.load(sorted_tokens_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < SR
    a_rows = (offs_r // RANK) * stride_as + (offs_r % RANK) * stride_ar  # slice s, rank row r
    a_base = a_ptr + slot.to(tl.int64) * stride_al
    k_begin = pid_k * k_per_split
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, k_per_split, BLOCK_K):
        offs_k = k_begin + k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x_tile = tl.load(
            x_ptr + tokens[:, None] * stride_xt + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :], other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        a_tile = tl.load(
            a_base + a_rows[None, :] + offs_k[:, None] * stride_ak,
            mask=mask_r[None, :] & mask_k[:, None], other=0.0,
        )  # [BLOCK_K, BLOCK_R]
        if DOT_FP32:
            acc += tl.dot(x_tile.to(tl.float32), a_tile.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x_tile, a_tile)
    partial = partial_ptr + pid_k * stride_ps + offs_m[:, None] * stride_pm + offs_r[None, :]
    tl.store(partial, acc, mask=mask_m[:, None] & mask_r[None, :])


@triton.jit
def _expand_kernel(
    partial_ptr, b_ptr, out_ptr, scales_ptr, slice_offsets_ptr,  # b [L, N, R], out [T, N]
    sorted_tokens_ptr, tile_slot_ptr, tile_start_ptr, tile_end_ptr,
    RANK, SPLIT_K,
    stride_ps, stride_pm,
    stride_bl, stride_bn, stride_br,
    stride_ot, stride_on,
    stride_ss, stride_sl,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    IEEE: tl.constexpr,  # exact fp32 dot; otherwise tf32 (bf16/fp16 B is exact in tf32)
):
    pid_tile = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    slot = tl.load(tile_slot_ptr + pid_tile)
    if slot < 0:
        return
    n_begin = tl.load(slice_offsets_ptr + pid_s) + pid_n * BLOCK_N
    n_end = tl.load(slice_offsets_ptr + pid_s + 1)
    if n_begin >= n_end:  # this slice is narrower than the widest one (GQA k/v)
        return
    row_start = tl.load(tile_start_ptr + pid_tile)
    row_end = tl.load(tile_end_ptr + pid_tile)
    offs_m = row_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < row_end
    tokens = tl.load(sorted_tokens_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < RANK
    offs_n = n_begin + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_end

    partial = partial_ptr + offs_m[:, None] * stride_pm + (pid_s * RANK + offs_r)[None, :]
    shrunk = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for split in range(SPLIT_K):
        shrunk += tl.load(partial + split * stride_ps, mask=mask_m[:, None] & mask_r[None, :], other=0.0)
    shrunk *= tl.load(scales_ptr + pid_s * stride_ss + slot * stride_sl)

    b_tile = tl.load(
        b_ptr + slot.to(tl.int64) * stride_bl + offs_n[None, :] * stride_bn + offs_r[:, None] * stride_br,
        mask=mask_r[:, None] & mask_n[None, :], other=0.0,
    ).to(tl.float32)  # [BLOCK_R, BLOCK_N]
    if IEEE:
        delta = tl.dot(shrunk, b_tile, input_precision="ieee")
    else:
        delta = tl.dot(shrunk, b_tile, input_precision="tf32")
    out = out_ptr + tokens[:, None] * stride_ot + offs_n[None, :] * stride_on
    mask = mask_m[:, None] & mask_n[None, :]
    current = tl.load(out, mask=mask, other=0.0).to(tl.float32)
    tl.store(out, (current + delta).to(out_ptr.dtype.element_ty), mask=mask)


def is_interpreting() -> bool:
    """True when TRITON_INTERPRET=1 made these kernels run in Triton's CPU interpreter."""
    return bool(triton.knobs.runtime.interpret)


@functools.lru_cache(maxsize=8)
def _target_programs(device: torch.device) -> int:
    """How many programs keep the device busy: 4 per SM on CUDA; a few on the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # small enough to keep interpreter runs quick, big enough to exercise split-K


def _shrink_config(
    meta: LoraBatch, hidden_in: int, sr: int, split_k: int | None
) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_K, split_k, k_per_split): A tiles stay <= 8K elements (16 KiB in bf16);
    split-K fills the device when there are few tiles, and no split is ever empty."""
    max_r = 256 if meta.block_m == DECODE_BLOCK_M else 64  # fp32 accumulator <= 4K elements
    block_r = min(max(16, triton.next_power_of_2(sr)), max_r)
    block_k = min(max(32, 8192 // block_r), 128, max(16, triton.next_power_of_2(hidden_in)))
    k_blocks = triton.cdiv(hidden_in, block_k)
    if split_k is None:
        programs = meta.num_tiles * triton.cdiv(sr, block_r)
        split_k = _target_programs(meta.device) // max(programs, 1)
    split_k = max(1, min(split_k, k_blocks))
    k_per_split = triton.cdiv(k_blocks, split_k) * block_k
    return block_r, block_k, triton.cdiv(hidden_in, k_per_split), k_per_split


def _expand_config(meta: LoraBatch, rank: int, widest: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_R): wide N tiles for decode, where each program has few rows."""
    block_r = max(16, triton.next_power_of_2(rank))
    block_n = 128 if meta.block_m == DECODE_BLOCK_M and block_r <= 64 else 64
    return min(block_n, max(16, triton.next_power_of_2(widest))), block_r


@functools.lru_cache(maxsize=256)
def _slice_offsets(widths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[S + 1] int32 column offsets, cached: the engine reuses a handful of slice layouts."""
    offsets = [0]
    for width in widths:
        offsets.append(offsets[-1] + width)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def apply(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    scales: torch.Tensor,  # [S, L] float32
    slice_widths: tuple[int, ...],  # S widths summing to N
    meta: LoraBatch,
    *,
    split_k: int | None = None,  # None: chosen by rule; tests force values
) -> torch.Tensor:
    """The Triton backend's entry: shrink then expand, for inputs already checked (or consistent
    by construction) on the current CUDA device; launches nothing when no token uses an adapter."""
    if meta.num_tokens == 0 or not meta.has_lora_tokens:
        return out
    num_tokens, hidden_in = x.shape
    _, num_slices, rank, _ = lora_a.shape
    sr = num_slices * rank
    block_r, block_k, split_k, k_per_split = _shrink_config(meta, hidden_in, sr, split_k)
    partial = torch.empty(split_k, num_tokens, sr, dtype=torch.float32, device=x.device)
    dot_fp32 = is_interpreting() or x.dtype == torch.float32
    tiles = (meta.sorted_tokens, meta.tile_slot, meta.tile_start, meta.tile_end)
    _shrink_kernel[(meta.num_tiles, split_k, triton.cdiv(sr, block_r))](
        x, lora_a, partial, *tiles,
        hidden_in, rank, sr, k_per_split,
        x.stride(0), x.stride(1),
        *lora_a.stride(),
        partial.stride(0), partial.stride(1),
        BLOCK_M=meta.block_m, BLOCK_R=block_r, BLOCK_K=block_k, DOT_FP32=dot_fp32,
    )
    block_n, block_r = _expand_config(meta, rank, max(slice_widths))
    _expand_kernel[(meta.num_tiles, triton.cdiv(max(slice_widths), block_n), num_slices)](
        partial, lora_b, out, scales, _slice_offsets(slice_widths, x.device), *tiles,
        rank, split_k,
        partial.stride(0), partial.stride(1),
        *lora_b.stride(),
        out.stride(0), out.stride(1),
        scales.stride(0), scales.stride(1),
        BLOCK_M=meta.block_m, BLOCK_N=block_n, BLOCK_R=block_r, IEEE=dot_fp32,
    )
    return out
