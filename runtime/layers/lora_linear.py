"""A base linear layer (possibly several fused projections) with stacked LoRA buffers.

As in vLLM's LoRA layers, the layer owns its adapter buffers; the adapter manager only decides
which slot an adapter lives in and calls `set_lora` / `reset_lora`. The buffers use the layout
of `lorafleet.kernels.add_lora_sliced`, so a fused projection (q|k|v, gate|up) runs its LoRA in
one shrink and one expand for every adapter of the batch:

    lora_a [L, S, R, K]   lora_b [L, N, R]   scales [S, L] float32

with L = adapter slots, S = fused projections (slices), R = max rank (smaller ranks zero-padded),
N = sum of the slices' widths (B's rows line up with the output's columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet import kernels
from torch import nn


@dataclass(frozen=True)
class LoraGroupStep:
    token_lora: torch.Tensor  # [T] int64 slot per row, -1 = base model or adapter not targeting the group
    meta: kernels.LoraBatch  # kernels.prepare_lora_batch(token_lora, L), built once for all layers


@dataclass(frozen=True)
class LoraStep:
    """Which adapter slot each row of this step's flat batch uses, per projection group.

    A group (`qkv`, `o`, `gate_up`, `down`) that no row's adapter targets is absent, and its
    layers skip LoRA entirely: q/v-only adapters cost nothing in the MLP.
    """

    groups: dict[str, LoraGroupStep]


class LoRALinear(nn.Module):
    """`y = x @ W.T (+ b)`, then each slice `s` gets `scale * (x @ A_s.T) @ B_s.T` for its slot."""

    def __init__(
        self,
        in_features: int,
        slices: tuple[tuple[str, int], ...],  # (module name, out features) in output order
        *,
        group: str,
        bias: bool,
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.group = group
        self.slice_index = {name: s for s, (name, _) in enumerate(slices)}
        self.slice_widths = tuple(width for _, width in slices)
        self.slice_bounds: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, width in slices:
            self.slice_bounds[name] = (offset, offset + width)
            offset += width
        self.out_features = offset
        self.weight = nn.Parameter(
            torch.empty(offset, in_features, dtype=dtype, device=device), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(offset, dtype=dtype, device=device), requires_grad=False)
            if bias
            else None
        )
        self.has_lora = max_loras > 0
        num_slots = max(max_loras, 1)
        self.lora_a = _buffer(num_slots, len(slices), max_rank, in_features, dtype=dtype, device=device)
        self.lora_b = _buffer(num_slots, offset, max_rank, dtype=dtype, device=device)
        self.lora_scales = _buffer(len(slices), num_slots, dtype=torch.float32, device=device)

    def set_lora(
        self, slot: int, name: str, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float
    ) -> None:
        """Writes one adapter's A [r, K] and B [N_s, r] for slice `name` into `slot`."""
        s, (lo, hi), rank = self.slice_index[name], self.slice_bounds[name], lora_a.shape[0]
        self.lora_a.data[slot, s].zero_()[:rank].copy_(lora_a)
        self.lora_b.data[slot, lo:hi].zero_()[:, :rank].copy_(lora_b)
        self.lora_scales.data[s, slot] = scale

    def reset_lora(self, slot: int) -> None:
        """Clears `slot`, so an adapter that does not target a slice adds nothing there."""
        self.lora_a.data[slot].zero_()
        self.lora_b.data[slot].zero_()
        self.lora_scales.data[:, slot] = 0.0

    def forward(self, x: torch.Tensor, lora: LoraStep | None) -> torch.Tensor:  # x [T, K] -> [T, N]
        out = torch.nn.functional.linear(x, self.weight, self.bias)
        step = lora.groups.get(self.group) if lora is not None and self.has_lora else None
        if step is None:
            return out
        return kernels.add_lora_sliced(
            out,
            x,
            self.lora_a,
            self.lora_b,
            step.token_lora,
            self.lora_scales,
            slice_widths=self.slice_widths,
            meta=step.meta,
        )


def _buffer(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device), requires_grad=False)
