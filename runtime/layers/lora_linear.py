"""A base linear layer (possibly several fused projections) with stacked LoRA buffers per slice.

As in vLLM's LoRA layers, the layer owns its adapter buffers; the adapter manager only decides
which slot an adapter lives in and calls `set_lora` / `reset_lora`. Per output slice (q, k, v of
a fused qkv projection, say) the buffers are:

    lora_a [L, R, K]   lora_b [L, N_slice, R]   scales [L] float32

with L = max loaded adapters and R = max rank (smaller ranks are zero-padded). The math goes
through `lorafleet.kernels.add_lora`, so every token of a batch may use a different slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet import kernels
from torch import nn


@dataclass(frozen=True)
class LoraBatch:
    """Which adapter slot each row of this step's flat batch uses."""

    token_lora: torch.Tensor  # [T] int64, -1 = base model
    has_lora: bool  # False when every row is -1: the LoRA path is skipped entirely


class LoRALinear(nn.Module):
    """`y = x @ W.T (+ b)`, then each slice `s` gets `scale * (x @ A_s.T) @ B_s.T` for its slot."""

    def __init__(
        self,
        in_features: int,
        slices: tuple[tuple[str, int], ...],  # (module name, out features) in output order
        *,
        bias: bool,
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.slice_names = tuple(name for name, _ in slices)
        self.slice_bounds: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in slices:
            self.slice_bounds[name] = (offset, offset + size)
            offset += size
        self.out_features = offset
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(offset, in_features, **factory), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(offset, **factory), requires_grad=False) if bias else None
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        self.lora_scales = nn.ParameterDict()
        if max_loras > 0:
            for name, size in slices:
                self.lora_a[name] = _buffer(max_loras, max_rank, in_features, **factory)
                self.lora_b[name] = _buffer(max_loras, size, max_rank, **factory)
                self.lora_scales[name] = _buffer(max_loras, dtype=torch.float32, device=device)

    def set_lora(
        self, slot: int, name: str, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float
    ) -> None:
        """Writes one adapter's A [r, K] and B [N, r] for slice `name` into `slot` (zero-padding r)."""
        rank = lora_a.shape[0]
        self.lora_a[name].data[slot].zero_()[:rank].copy_(lora_a)
        self.lora_b[name].data[slot].zero_()[:, :rank].copy_(lora_b)
        self.lora_scales[name].data[slot] = scale

    def reset_lora(self, slot: int) -> None:
        """Clears `slot` in every slice, so an adapter that does not target a slice adds nothing."""
        for name in self.lora_a:
            self.lora_a[name].data[slot].zero_()
            self.lora_b[name].data[slot].zero_()
            self.lora_scales[name].data[slot] = 0.0

    def forward(self, x: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:  # x [T, K] -> [T, N]
        out = torch.nn.functional.linear(x, self.weight, self.bias)
        if lora is None or not lora.has_lora or not len(self.lora_a):
            return out
        for name in self.slice_names:
            lo, hi = self.slice_bounds[name]
            view = out[:, lo:hi] if len(self.slice_names) > 1 else out
            kernels.add_lora(
                view, x, self.lora_a[name], self.lora_b[name], lora.token_lora, self.lora_scales[name]
            )
        return out


def _buffer(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device), requires_grad=False)
