"""Batched multi-LoRA kernels: every token of a batch may use a different adapter.

One step of the engine::

    meta = prepare_lora_batch(token_lora, num_slots=L)          # once per step, all layers
    add_lora(out, x, lora_a, lora_b, token_lora, scales, meta=meta)          # o_proj, down_proj
    add_lora_sliced(qkv, x, qkv_a, qkv_b, token_lora, qkv_scales,             # q/k/v in one go
                    slice_widths=(q_width, kv_width, kv_width), meta=meta)

`add_lora(out, x, lora_a, lora_b, token_lora, scales)` adds, in place,
`scales[l] * (x[t] @ lora_a[l].T) @ lora_b[l].T` into `out[t]` for each token `t` whose slot
`l = token_lora[t]` is not -1, and returns `out`. Shapes: x [T, K]; out [T, N] (any strides, so
a column view of a fused output works); lora_a [L, R, K]; lora_b [L, N, R]; token_lora [T] int
in any order; scales [L] float32. x, out, lora_a and lora_b share one dtype (fp32, fp16, bf16).
Smaller ranks are zero-padded to R. The delta is computed in fp32 and added with one rounding.

`add_lora_sliced` is the fused form for projections that share x (q/k/v, gate/up): one shrink
launch reads x once for every slice, one expand launch writes every slice. lora_a is
[L, S, R, K] (slice s of slot l: `lora_a[l, s, :r]`); lora_b is [L, N, R] with slice s on rows
`sum(widths[:s]) : sum(widths[:s+1])` — the same rows as in `out`; scales is [L] or [S, L]
(per-slice scales for PEFT `alpha_pattern`/`rank_pattern`). Widths may differ (GQA).

`add_lora_paged` is the same operation on paged adapter storage (`lorafleet.kernels.pages`):
lora_a_pages [P, S, PR, K] and lora_b_pages [P, N, PR] hold PR = 8 rank rows of every slice per
page; `pages = build_adapter_pages(slot_pages, ranks, max_pages=...)` says which pages hold
each slot's rank rows and each slot's true rank, so an adapter costs ceil(r / 8) pages and the
kernels stop at its rank. A token on an empty slot (rank 0) is left untouched, like -1.

`prepare_lora_batch(token_lora, num_slots)` returns a frozen `LoraBatch`: tokens grouped by slot
and cut into tiles, built on the device with one host sync (the slot range check; pass
`validate=False` to skip it inside CUDA graph capture). Passing `meta=` skips that work in every
layer. Without `meta`, each call prepares its own.

Dispatch: `backend_for(device)` resolves the implementation once: CUDA tensors use the Triton
kernels (`lorafleet.kernels.lora`); CPU tensors use the torch path (`torch_lora`: grouped per
adapter, or gathered per token when there are many adapters with few tokens each, chosen per
call by `torch_lora.choose_path`). `LORAFLEET_KERNELS=triton` forces Triton (with
`TRITON_INTERPRET=1` it runs on the CPU); `LORAFLEET_KERNELS=torch` forces torch. The public
functions here check their inputs and raise `LoraKernelError` (a `ValueError`) naming the shapes
before anything is launched; a caller that runs many layers with buffers that are consistent by
construction (the engine) resolves `backend_for` once and calls `backend.apply_paged(...)` (or
`backend.apply(...)` for stacked weights) directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from lorafleet.kernels.backend import LoraBackend, backend_for
from lorafleet.kernels.batch import LoraBatch, prepare_lora_batch
from lorafleet.kernels.errors import LoraKernelError
from lorafleet.kernels.paged_attention import (
    AttentionKernelError,
    paged_decode_attention,
    paged_prefill_attention,
)
from lorafleet.kernels.pages import PAGE_RANK, AdapterPages, build_adapter_pages, pages_for_rank
from lorafleet.kernels.validation import check_meta, check_paged_inputs, check_sliced_inputs


def add_lora(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] float32
    *,
    meta: LoraBatch | None = None,
) -> torch.Tensor:
    """Adds each token's LoRA delta into `out` in place and returns `out`.

    Args:
        out: [T, N] the base layer's output (x's dtype); may be a column view.
        x: [T, K] activations, fp32, fp16 or bf16.
        lora_a: [L, R, K] stacked A of L adapter slots, ranks zero-padded to R.
        lora_b: [L, N, R] stacked B, zero-padded likewise.
        token_lora: [T] integer slot of each token; -1 leaves that row of `out` untouched.
        scales: [L] float32, alpha/r (alpha/sqrt(r) for rsLoRA) per slot.
        meta: this step's `prepare_lora_batch(token_lora, L)`; built here when omitted.

    Raises:
        LoraKernelError (a ValueError): mismatched shapes, dtypes or devices, a slot out of range.

    Example:
        >>> out = add_lora(out, x, lora_a, lora_b, torch.tensor([0, -1, 1]), torch.ones(2))
    """
    if lora_a.dim() != 3 or lora_b.dim() != 3:
        raise LoraKernelError(
            f"add_lora expects lora_a [L, R, K] and lora_b [L, N, R]; got lora_a {tuple(lora_a.shape)}, "
            f"lora_b {tuple(lora_b.shape)} (use add_lora_sliced for [L, S, R, K])"
        )
    if out.dim() != 2:
        raise LoraKernelError(f"out must be [T, N], got {tuple(out.shape)}")
    return add_lora_sliced(
        out, x, lora_a.unsqueeze(1), lora_b, token_lora, scales, slice_widths=(out.shape[1],), meta=meta
    )


def add_lora_sliced(
    out: torch.Tensor,  # [T, N], N = sum(slice_widths)
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] or [S, L] float32
    *,
    slice_widths: Sequence[int],  # S output widths, e.g. (q, k, v) or (gate, up)
    meta: LoraBatch | None = None,
) -> torch.Tensor:
    """Fused LoRA for S projections that share x, in one shrink and one expand launch.

    Slice s adds `scales[s, l] * (x[t] @ lora_a[l, s].T) @ lora_b[l, o_s:o_s + w_s].T` into
    `out[t, o_s:o_s + w_s]`, where w_s = slice_widths[s] and o_s = sum(slice_widths[:s]).
    Adapters that skip a slice keep zeros there. Other arguments as in `add_lora`.

    Example:
        >>> qkv = add_lora_sliced(qkv, x, qkv_a, qkv_b, token_lora, scales,
        ...                       slice_widths=(4096, 1024, 1024), meta=meta)
    """
    widths = tuple(int(w) for w in slice_widths)
    scales_2d = check_sliced_inputs(out, x, lora_a, lora_b, token_lora, scales, widths)  # [S, L]
    num_slots = lora_a.shape[0]
    if meta is None:
        meta = prepare_lora_batch(token_lora, num_slots)
    else:
        check_meta(meta, token_lora, num_slots)
    if meta.num_tokens == 0 or not meta.has_lora_tokens:
        return out  # nothing to add: launch nothing
    backend = backend_for(x.device)
    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        return backend.apply(out, x, lora_a, lora_b, scales_2d, widths, meta)


def add_lora_paged(
    out: torch.Tensor,  # [T, N], N = sum(slice_widths)
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] or [S, L] float32
    *,
    pages: AdapterPages,  # L slots: page table [L, max_pages], ranks [L]
    slice_widths: Sequence[int],  # S output widths
    meta: LoraBatch | None = None,
) -> torch.Tensor:
    """`add_lora_sliced` on paged adapter storage: each slot's rank rows live in its pages.

    Slot l's A_s is [r, K] with row ρ = `lora_a_pages[page_table[l, ρ // PR], s, ρ % PR]` for
    ρ < r = ranks[l], and its B the matching columns of `lora_b_pages`; then as in
    `add_lora_sliced`: `out[t, slice s] += scales[s, l] * (x[t] @ A_s.T) @ B_s.T`, delta in fp32,
    one rounding. Rows past a slot's rank are never read; tokens on slot -1 or on an empty slot
    (rank 0) are left bit-identical.

    Raises:
        LoraKernelError (a ValueError): mismatched shapes, dtypes or devices, a page table that
            points past the pool or was built for another page size, a slot out of range.

    Example:
        >>> pages = build_adapter_pages([[2], [0, 1]], [8, 16], max_pages=2)   # ranks 8 and 16
        >>> qkv = add_lora_paged(qkv, x, a_pages, b_pages, token_lora, scales, pages=pages,
        ...                      slice_widths=(4096, 1024, 1024), meta=meta)
    """
    widths = tuple(int(w) for w in slice_widths)
    scales_2d = check_paged_inputs(out, x, lora_a_pages, lora_b_pages, token_lora, scales, widths, pages)
    if meta is None:
        meta = prepare_lora_batch(token_lora, pages.num_slots)
    else:
        check_meta(meta, token_lora, pages.num_slots)
    if meta.num_tokens == 0 or not meta.has_lora_tokens:
        return out  # nothing to add: launch nothing
    backend = backend_for(x.device)
    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        return backend.apply_paged(out, x, lora_a_pages, lora_b_pages, scales_2d, widths, meta, pages)


__all__ = [
    "PAGE_RANK",
    "AdapterPages",
    "AttentionKernelError",
    "LoraBackend",
    "LoraBatch",
    "LoraKernelError",
    "add_lora",
    "add_lora_paged",
    "add_lora_sliced",
    "backend_for",
    "build_adapter_pages",
    "pages_for_rank",
    "paged_decode_attention",
    "paged_prefill_attention",
    "prepare_lora_batch",
]
