"""Input checks shared by every path, run before anything is launched.

Everything here looks only at shapes, dtypes and devices (no host synchronisation); the slot
range of `token_lora` is checked by `prepare_lora_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.errors import LoraKernelError

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _shapes(**tensors: torch.Tensor) -> str:
    return ", ".join(
        f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for name, t in tensors.items()
    )


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
    given = _shapes(out=out, x=x, lora_a=lora_a, lora_b=lora_b, token_lora=token_lora, scales=scales)

    def fail(problem: str) -> LoraKernelError:
        return LoraKernelError(f"{problem}; got {given}, slice_widths {tuple(slice_widths)}")

    if x.dim() != 2 or out.dim() != 2 or lora_a.dim() != 4 or lora_b.dim() != 3:
        raise fail("expected x [T, K], out [T, N], lora_a [L, S, R, K] and lora_b [L, N, R]")
    num_tokens, hidden_in = x.shape
    num_slots, num_slices, rank, a_in = lora_a.shape
    if out.shape[0] != num_tokens or token_lora.shape != (num_tokens,):
        raise fail("x, out and token_lora must have the same number of tokens T")
    if a_in != hidden_in:
        raise fail("lora_a's last dim must equal x's K")
    if lora_b.shape != (num_slots, out.shape[1], rank):
        raise fail("lora_b must be [L, N, R] with L and R of lora_a and N of out")
    if len(slice_widths) != num_slices or any(int(w) <= 0 for w in slice_widths):
        raise fail("slice_widths must give one positive width per slice of lora_a")
    if sum(int(w) for w in slice_widths) != out.shape[1]:
        raise fail("slice_widths must sum to out's N")
    if min(num_slots, rank, hidden_in) == 0:
        raise fail("L, R and K must be positive")
    if x.dtype not in SUPPORTED_DTYPES:
        raise fail(f"x must be one of {[str(d) for d in SUPPORTED_DTYPES]}")
    if not (out.dtype == lora_a.dtype == lora_b.dtype == x.dtype):
        raise fail("out, lora_a and lora_b must have x's dtype")
    if token_lora.dtype.is_floating_point or token_lora.dtype == torch.bool:
        raise fail("token_lora must be an integer tensor")
    if scales.dtype != torch.float32 or scales.shape not in ((num_slots,), (num_slices, num_slots)):
        raise fail("scales must be float32 [L] or [S, L]")
    devices = {t.device for t in (out, x, lora_a, lora_b, token_lora, scales)}
    if len(devices) != 1:
        raise fail(f"all tensors must be on one device, found {sorted(str(d) for d in devices)}")
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
