"""Which implementation runs the LoRA math for tensors on a device, resolved once.

`backend_for(device)` reads `LORAFLEET_KERNELS` and returns a `LoraBackend`; callers that run
many layers (the engine) resolve it when they are built and call `backend.apply_paged(...)` (or
`backend.apply(...)` for stacked weights) in every layer, with no environment read, dispatch or
input check on the hot path. Both backends take the same arguments:

    apply_paged(out [T, N], x [T, K], lora_a_pages [P, S, PR, K], lora_b_pages [P, N, PR],
                scales [S, L] float32, slice_widths (S ints summing to N),
                meta = prepare_lora_batch(token_lora, L), pages = build_adapter_pages(...)) -> out
    apply(out, x, lora_a [L, S, R, K], lora_b [L, N, R], scales, slice_widths, meta) -> out
          (the stacked layout: apply_paged with one page of R rows per slot)

and trust them: the checks live in the public `add_lora_paged` / `add_lora_sliced`. The torch
path's `apply_paged` also takes `slot_weights=` (a layer's `torch_slot_weights.SlotWeights`, for
its planned grouped form); the engine's CPU layers, which own one each, call it directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.errors import LoraKernelError
from lorafleet.kernels.pages import AdapterPages

BACKENDS = ("auto", "triton", "torch")

ApplyFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...], LoraBatch],
    torch.Tensor,
]
ApplyPagedFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...], LoraBatch,
     AdapterPages],
    torch.Tensor,
]


@dataclass(frozen=True)
class LoraBackend:
    """A resolved implementation: `name` is "torch" (CPU path) or "triton"."""

    name: str
    apply: ApplyFn
    apply_paged: ApplyPagedFn


def backend_for(device: torch.device) -> LoraBackend:
    """The backend for tensors on `device`, honouring LORAFLEET_KERNELS (auto | triton | torch).

    Raises:
        LoraKernelError: an unknown LORAFLEET_KERNELS value, or Triton forced on a non-CUDA
            device without TRITON_INTERPRET=1.

    Example:
        >>> backend_for(torch.device("cpu")).name
        'torch'
    """
    choice = os.environ.get("LORAFLEET_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise LoraKernelError(f"LORAFLEET_KERNELS must be one of {BACKENDS}, got {choice!r}")
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        from lorafleet.kernels import torch_lora

        return LoraBackend("torch", torch_lora.apply, torch_lora.apply_paged)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise LoraKernelError(
            f"LORAFLEET_KERNELS=triton on {device} tensors needs TRITON_INTERPRET=1 (set before triton "
            "is first imported) to run the Triton kernels in the CPU interpreter"
        )
    from lorafleet.kernels import lora  # imported late: TRITON_INTERPRET is read at decoration

    return LoraBackend("triton", lora.apply, lora.apply_paged)
