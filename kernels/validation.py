"""Input checks shared by every path, run before anything is launched.

Everything here looks only at shapes, dtypes, devices and the placement's host copies (no host
synchronisation); the slot range of `token_lora` is checked by `prepare_lora_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.errors import LoraKernelError
from lorafleet.kernels.pages import AdapterPages

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
Fail = Callable[[str], LoraKernelError]


def _shapes(**tensors: torch.Tensor) -> str:
    return ", ".join(
        f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for name, t in tensors.items()
    )


def _failure(slice_widths: Sequence[int], **tensors: torch.Tensor) -> Fail:
    given = _shapes(**tensors)

    def fail(problem: str) -> LoraKernelError:
        return LoraKernelError(f"{problem}; got {given}, slice_widths {tuple(slice_widths)}")

    return fail


def check_sliced_inputs(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int
    scales: torch.Tensor,  # [L] or [S, L] float32
    slice_widths: Sequence[int],  # S widths summing to N
) -> torch.Tensor:
    """Raises `LoraKernelError` naming the offending shapes; returns scales as [S, L]."""
    fail = _failure(slice_widths, out=out, x=x, lora_a=lora_a, lora_b=lora_b, token_lora=token_lora,
                    scales=scales)
    if x.dim() != 2 or out.dim() != 2 or lora_a.dim() != 4 or lora_b.dim() != 3:
        raise fail("expected x [T, K], out [T, N], lora_a [L, S, R, K] and lora_b [L, N, R]")
    num_slots, num_slices, rank, a_in = lora_a.shape
    if lora_b.shape != (num_slots, out.shape[1], rank):
        raise fail("lora_b must be [L, N, R] with L and R of lora_a and N of out")
    if min(num_slots, rank, x.shape[1]) == 0:
        raise fail("L, R and K must be positive")
    _check_common(fail, out, x, lora_a, lora_b, token_lora, scales, slice_widths)
    return _scales_2d(fail, scales, num_slices, num_slots)


def check_paged_inputs(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    token_lora: torch.Tensor,  # [T] int
    scales: torch.Tensor,  # [L] or [S, L] float32
    slice_widths: Sequence[int],  # S widths summing to N
    pages: AdapterPages,  # L slots
) -> torch.Tensor:
    """Raises `LoraKernelError` naming the offending shapes and placement; returns scales as [S, L]."""
    fail = _failure(slice_widths, out=out, x=x, lora_a_pages=lora_a_pages, lora_b_pages=lora_b_pages,
                    token_lora=token_lora, scales=scales, page_table=pages.page_table)
    if x.dim() != 2 or out.dim() != 2 or lora_a_pages.dim() != 4 or lora_b_pages.dim() != 3:
        raise fail("expected x [T, K], out [T, N], lora_a_pages [P, S, PR, K] and lora_b_pages [P, N, PR]")
    num_pages, num_slices, page_rank, _ = lora_a_pages.shape
    if lora_b_pages.shape != (num_pages, out.shape[1], page_rank):
        raise fail("lora_b_pages must be [P, N, PR] with P and PR of lora_a_pages and N of out")
    if page_rank != pages.page_rank:
        raise fail(f"the pages hold {page_rank} rank rows each but the placement was built for "
                   f"page_rank {pages.page_rank}")
    if pages.highest_page >= num_pages:
        raise fail(f"the page table points at page {pages.highest_page}, past the pool of {num_pages} pages")
    if min(num_pages, x.shape[1]) == 0:
        raise fail("P and K must be positive")
    _check_common(fail, out, x, lora_a_pages, lora_b_pages, token_lora, scales, slice_widths)
    if pages.device != x.device:
        raise fail(f"the page table is on {pages.device}, the tensors on {x.device}")
    return _scales_2d(fail, scales, num_slices, pages.num_slots)


def _check_common(
    fail: Fail,
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,  # [L or P, S, R or PR, K]
    lora_b: torch.Tensor,  # [L or P, N, R or PR]
    token_lora: torch.Tensor,
    scales: torch.Tensor,
    slice_widths: Sequence[int],
) -> None:
    num_tokens, hidden_in = x.shape
    if out.shape[0] != num_tokens or token_lora.shape != (num_tokens,):
        raise fail("x, out and token_lora must have the same number of tokens T")
    if lora_a.shape[3] != hidden_in:
        raise fail("lora_a's last dim must equal x's K")
    if len(slice_widths) != lora_a.shape[1] or any(int(w) <= 0 for w in slice_widths):
        raise fail("slice_widths must give one positive width per slice of lora_a")
    if sum(int(w) for w in slice_widths) != out.shape[1]:
        raise fail("slice_widths must sum to out's N")
    if x.dtype not in SUPPORTED_DTYPES:
        raise fail(f"x must be one of {[str(d) for d in SUPPORTED_DTYPES]}")
    if not (out.dtype == lora_a.dtype == lora_b.dtype == x.dtype):
        raise fail("out, lora_a and lora_b must have x's dtype")
    if token_lora.dtype.is_floating_point or token_lora.dtype == torch.bool:
        raise fail("token_lora must be an integer tensor")
    devices = {t.device for t in (out, x, lora_a, lora_b, token_lora, scales)}
    if len(devices) != 1:
        raise fail(f"all tensors must be on one device, found {sorted(str(d) for d in devices)}")


def _scales_2d(fail: Fail, scales: torch.Tensor, num_slices: int, num_slots: int) -> torch.Tensor:
    if scales.dtype != torch.float32 or scales.shape not in ((num_slots,), (num_slices, num_slots)):
        raise fail(f"scales must be float32 [L] or [S, L] for L = {num_slots} slots")
    return scales.expand(num_slices, num_slots) if scales.dim() == 1 else scales


def check_meta(meta: LoraBatch, token_lora: torch.Tensor, num_slots: int) -> None:
    """Raises `LoraKernelError` if `meta` was built for another batch shape or device."""
    if meta.num_tokens != token_lora.numel() or meta.num_slots != num_slots:
        raise LoraKernelError(
            f"meta was prepared for {meta.num_tokens} tokens and {meta.num_slots} slots, "
            f"but this call has {token_lora.numel()} tokens and {num_slots} slots"
        )
    if meta.device != token_lora.device:
        raise LoraKernelError(f"meta lives on {meta.device}, the tensors on {token_lora.device}")
