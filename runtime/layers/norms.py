"""RMSNorm in the two forms the supported checkpoints use, each computed as transformers does.

Llama and its kin scale the normalised activations by `weight` after casting back to the input
dtype; Gemma computes `normalised * (1 + weight)` in float32 and casts at the end. The rounding
differs in half precision, so the order matters for bit-level agreement with the oracle.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """`x / rms(x) * weight` (offset 0) or Gemma's `x / rms(x) * (1 + weight)` (offset 1)."""

    def __init__(
        self, dim: int, eps: float, dtype: torch.dtype, device: torch.device, *, offset: float = 0.0
    ) -> None:
        super().__init__()
        self.eps = eps
        self.offset = offset
        init = torch.zeros if offset else torch.ones
        self.weight = nn.Parameter(init(dim, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim]
        hidden = x.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (hidden * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * hidden.to(x.dtype)
