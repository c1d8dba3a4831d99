"""Triton SGMV kernels over paged adapters: shrink (x·Aᵀ) and expand (·Bᵀ, scaled, added into out).

Adapter weights live in pages of PR rank rows (`lorafleet.kernels.pages`): A pages
[P, S, PR, K], B pages [P, N, PR]; slot l's rank row ρ is row ρ % PR of page
`page_table[l, ρ // PR]`, for ρ < ranks[l]. The stacked layout is one page of R rows per slot.

Work is cut by `LoraBatch` tiles: each program handles up to BLOCK_M rows that share one adapter
slot, so those rows share every load of that adapter's weights (SGMV). Decode batches (one or
few tokens per adapter) use 16-row tiles and split K across many programs so that each adapter's
A is streamed by many SMs at once (the BGMV case); prefill uses 64-row tiles. Unused tiles of
the fixed-length tile list return at once.

shrink: grid (tiles, SPLIT_K, rank blocks). Output columns are rank-major, column ρ·S + s for
    rank row ρ of slice s, so a slot's live columns are the prefix ρ < rank: rank blocks past
    S·rank return at once, and inside a block, columns past it are masked (no loads). x is read
    once for all S slices; fp32 partials [SPLIT_K, T, R_max·S] go out with plain stores,
    indexed by sorted row: no atomics, no memset, deterministic.
expand: grid (tiles, N-blocks of the widest slice, S). Loops over the slot's rank rows only,
    BLOCK_R at a time: sums the split-K partials, scales them in fp32, multiplies by the B rows
    read through the page table, and adds into `out` with a single rounding. A slot of rank 0
    (empty) writes nothing.

Tile sizes follow the rules of `triton_config` (shapes and the device's shared memory only, so
the grid never depends on which adapters are present: CUDA-graph friendly, no host sync).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from lorafleet.kernels import triton_config
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.pages import AdapterPages, stacked_pages


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, partial_ptr,  # x [T, K], a [P, S, PR, K], partial [SPLIT_K, T, R_max*S] fp32
    page_table_ptr, ranks_ptr,  # [L, max_pages] int32, [L] int32
    sorted_tokens_ptr, tile_slot_ptr, tile_start_ptr, tile_end_ptr,
    K, NUM_SLICES, PAGE_R, k_per_split,
    stride_xt, stride_xk,
    stride_ap, stride_as, stride_ar, stride_ak,
    stride_tl,
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
    live = tl.load(ranks_ptr + slot) * NUM_SLICES  # rank-major columns of this slot's true rank
    col_begin = pid_r * BLOCK_R
    if col_begin >= live:
        return
    row_start = tl.load(tile_start_ptr + pid_tile)
    row_end = tl.load(tile_end_ptr + pid_tile)
    offs_m = row_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < row_end
    tokens = tl.load(sorted_tokens_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
    offs_c = col_begin + tl.arange(0, BLOCK_R)
    mask_c = offs_c < live
    rho = offs_c // NUM_SLICES  # rank row
    page = tl.load(page_table_ptr + slot.to(tl.int64) * stride_tl + rho // PAGE_R, mask=mask_c, other=0)
    a_cols = page.to(tl.int64) * stride_ap + (offs_c % NUM_SLICES) * stride_as + (rho % PAGE_R) * stride_ar
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
            a_ptr + a_cols[None, :] + offs_k[:, None] * stride_ak,
            mask=mask_c[None, :] & mask_k[:, None], other=0.0,
        )  # [BLOCK_K, BLOCK_R]
        if DOT_FP32:
            acc += tl.dot(x_tile.to(tl.float32), a_tile.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x_tile, a_tile)
    partial = partial_ptr + pid_k * stride_ps + offs_m[:, None] * stride_pm + offs_c[None, :]
    tl.store(partial, acc, mask=mask_m[:, None] & mask_c[None, :])


@triton.jit
def _expand_kernel(
    partial_ptr, b_ptr, out_ptr, scales_ptr, slice_offsets_ptr,  # b [P, N, PR], out [T, N]
    page_table_ptr, ranks_ptr,  # [L, max_pages] int32, [L] int32
    sorted_tokens_ptr, tile_slot_ptr, tile_start_ptr, tile_end_ptr,
    NUM_SLICES, PAGE_R, SPLIT_K,
    stride_ps, stride_pm,
    stride_bp, stride_bn, stride_br,
    stride_tl,
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
    rank = tl.load(ranks_ptr + slot)
    if rank == 0:  # an empty slot: its rows stay untouched
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
    offs_n = n_begin + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_end
    scale = tl.load(scales_ptr + pid_s * stride_ss + slot * stride_sl)
    table_row = page_table_ptr + slot.to(tl.int64) * stride_tl
    delta = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):  # the slot's true rank only
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < rank
        partial = partial_ptr + offs_m[:, None] * stride_pm + (offs_r * NUM_SLICES + pid_s)[None, :]
        shrunk = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for split in range(SPLIT_K):
            shrunk += tl.load(partial + split * stride_ps, mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        page = tl.load(table_row + offs_r // PAGE_R, mask=mask_r, other=0).to(tl.int64)
        b_rows = page * stride_bp + (offs_r % PAGE_R) * stride_br  # [BLOCK_R]
        b_tile = tl.load(
            b_ptr + b_rows[:, None] + offs_n[None, :] * stride_bn,
            mask=mask_r[:, None] & mask_n[None, :], other=0.0,
        ).to(tl.float32)  # [BLOCK_R, BLOCK_N]
        if IEEE:
            delta += tl.dot(shrunk * scale, b_tile, input_precision="ieee")
        else:
            delta += tl.dot(shrunk * scale, b_tile, input_precision="tf32")
    out = out_ptr + tokens[:, None] * stride_ot + offs_n[None, :] * stride_on
    mask = mask_m[:, None] & mask_n[None, :]
    current = tl.load(out, mask=mask, other=0.0).to(tl.float32)
    tl.store(out, (current + delta).to(out_ptr.dtype.element_ty), mask=mask)


def is_interpreting() -> bool:
    """True when TRITON_INTERPRET=1 made these kernels run in Triton's CPU interpreter."""
    return bool(triton.knobs.runtime.interpret)


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
    """The stacked layout: `apply_paged` with one page of R rows per slot."""
    pages = stacked_pages(lora_a.shape[0], lora_a.shape[2], x.device)
    return apply_paged(out, x, lora_a, lora_b, scales, slice_widths, meta, pages, split_k=split_k)


def apply_paged(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    scales: torch.Tensor,  # [S, L] float32
    slice_widths: tuple[int, ...],  # S widths summing to N
    meta: LoraBatch,
    pages: AdapterPages,
    *,
    split_k: int | None = None,  # None: chosen by rule; tests force values
) -> torch.Tensor:
    """The Triton backend's entry: shrink then expand, for inputs already checked (or consistent
    by construction) on the current CUDA device; launches nothing when no token uses an adapter."""
    if meta.num_tokens == 0 or not meta.has_lora_tokens:
        return out
    num_tokens, hidden_in = x.shape
    num_slices, page_rank = lora_a_pages.shape[1], lora_a_pages.shape[2]
    columns = num_slices * pages.max_rank
    budget = triton_config.shared_memory_budget(x.device)
    shrink = triton_config.shrink_config(
        block_m=meta.block_m, num_tiles=meta.num_tiles, hidden_in=hidden_in, columns=columns,
        element_bytes=x.element_size(), shared_budget=budget,
        target_programs=triton_config.target_programs(x.device), split_k=split_k,
    )
    partial = torch.empty(shrink.split_k, num_tokens, columns, dtype=torch.float32, device=x.device)
    dot_fp32 = is_interpreting() or x.dtype == torch.float32
    placement = (pages.page_table, pages.ranks)
    tiles = (meta.sorted_tokens, meta.tile_slot, meta.tile_start, meta.tile_end)
    _shrink_kernel[(meta.num_tiles, shrink.split_k, triton.cdiv(columns, shrink.block_r))](
        x, lora_a_pages, partial, *placement, *tiles,
        hidden_in, num_slices, page_rank, shrink.k_per_split,
        x.stride(0), x.stride(1),
        *lora_a_pages.stride(),
        pages.page_table.stride(0),
        partial.stride(0), partial.stride(1),
        BLOCK_M=meta.block_m, BLOCK_R=shrink.block_r, BLOCK_K=shrink.block_k, DOT_FP32=dot_fp32,
        num_stages=triton_config.NUM_STAGES,
    )
    expand = triton_config.expand_config(
        block_m=meta.block_m, max_rank=pages.max_rank, widest=max(slice_widths), shared_budget=budget
    )
    _expand_kernel[(meta.num_tiles, triton.cdiv(max(slice_widths), expand.block_n), num_slices)](
        partial, lora_b_pages, out, scales, _slice_offsets(slice_widths, x.device), *placement, *tiles,
        num_slices, page_rank, shrink.split_k,
        partial.stride(0), partial.stride(1),
        *lora_b_pages.stride(),
        pages.page_table.stride(0),
        out.stride(0), out.stride(1),
        scales.stride(0), scales.stride(1),
        BLOCK_M=meta.block_m, BLOCK_N=expand.block_n, BLOCK_R=expand.block_r, IEEE=dot_fp32,
        num_stages=triton_config.NUM_STAGES,
    )
    return out
