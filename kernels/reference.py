"""Plain-torch definition of batched multi-LoRA, written for clarity, not speed.

The tests compare every fast path (the grouped torch path and the Triton kernels) against
this file. One token at a time:

    out[t] += scales[l] * (x[t] @ lora_a[l].T) @ lora_b[l].T     where l = token_lora[t] >= 0
"""

from __future__ import annotations

import torch


def add_lora(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] float32
) -> torch.Tensor:
    """Adds each token's LoRA delta into `out`, in float32, with one rounding to out's dtype."""
    for t in range(x.shape[0]):
        slot = int(token_lora[t])
        if slot < 0:
            continue
        shrunk = x[t].float() @ lora_a[slot].float().T  # [R]
        delta = float(scales[slot]) * (shrunk @ lora_b[slot].float().T)  # [N]
        out[t] = (out[t].float() + delta).to(out.dtype)
    return out
