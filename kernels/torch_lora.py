"""Grouped multi-LoRA in torch: one matmul pair per adapter present in the batch.

This is the CPU path (and the fallback when Triton is not available). It groups tokens by
adapter slot, so its cost grows with the number of distinct adapters, not with the tokens.
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
    for slot in torch.unique(token_lora).tolist():
        if slot < 0:
            continue
        rows = (token_lora == slot).nonzero(as_tuple=True)[0]
        shrunk = x[rows].float() @ lora_a[slot].float().T  # [n, R]
        delta = (shrunk @ lora_b[slot].float().T) * scales[slot].float()  # [n, N]
        out[rows] = (out[rows].float() + delta).to(out.dtype)
    return out
