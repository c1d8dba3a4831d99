"""RMSNorm in the two forms the supported checkpoints use, each computed as transformers does.

Llama and its kin scale the normalised activations by `weight` after casting back to the input
dtype; Gemma computes `normalised * (1 + weight)` in float32 and casts at the end. The rounding
differs in half precision, so the order matters for bit-level agreement with the oracle.

On CUDA (with the Triton backend, `kernels.fused.fused_layers`) both forms, and the decoder's
residual add before a norm (`add_and_norm`), run as one fused kernel that rounds as this code does
(`lorafleet.kernels.fused_norm`). On the CPU, fp32 rows go through the CPU kernels where `make setup`
built them (`kernels/native_cpu.py`: one pass per row, the sum of squares in another order, so within
fp32 rounding of the eager form); elsewhere the eager code below runs.
"""

from __future__ import annotations

from types import ModuleType

import torch
from lorafleet.kernels import native_cpu
from lorafleet.kernels.fused import fused_layers
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
        self.fused = fused_layers(torch.device(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim]
        if self.fused:
            from lorafleet.kernels import fused_norm

            return fused_norm.rms_norm(x, self.weight, self.eps, self.offset)
        kernel = self._cpu_kernel(x)
        if kernel is not None:
            rows = x.view(-1, x.shape[-1])
            out = torch.empty(rows.shape, dtype=x.dtype)
            kernel.rms_norm(out, rows, self.weight, self.eps, self.offset)
            return out.view(x.shape)
        hidden = x.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (hidden * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * hidden.to(x.dtype)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor  # [T, dim] each
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (x + residual, its norm)
        """The decoder's residual add followed by this norm (one kernel on CUDA)."""
        if self.fused:
            from lorafleet.kernels import fused_norm

            return fused_norm.add_rms_norm(x, residual, self.weight, self.eps, self.offset)
        kernel = self._cpu_kernel(x) if x.shape == residual.shape and x.dim() == 2 else None
        if kernel is not None and residual.is_contiguous():
            total, out = torch.empty(x.shape, dtype=x.dtype), torch.empty(x.shape, dtype=x.dtype)
            kernel.add_rms_norm(out, total, x, residual, self.weight, self.eps, self.offset)
            return total, out
        total = x + residual
        return total, self(total)

    def _cpu_kernel(self, x: torch.Tensor) -> ModuleType | None:
        """The CPU kernels where built and these rows are theirs: fp32, contiguous, on the CPU."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return None
        if not x.is_contiguous():
            return None
        return native_cpu.norm_rope_kernel()
