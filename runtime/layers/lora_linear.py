"""A base linear layer (possibly several fused projections) with stacked LoRA buffers.

As in vLLM's LoRA layers, the layer owns its adapter buffers; the adapter manager only decides
which slot an adapter lives in and calls `set_lora` / `reset_lora`. The buffers use the layout
of `lorafleet.kernels.add_lora_sliced`, so a fused projection (q|k|v, gate|up) runs its LoRA in
one shrink and one expand for every adapter of the batch:

    lora_a [L, S, R, K]   lora_b [L, N, R]   scales [S, L] float32

with L = adapter slots, S = fused projections (slices), R = max rank (smaller ranks zero-padded),
N = sum of the slices' widths (B's rows line up with the output's columns).

On the CPU the buffers are stored transposed, A as [L, K, S, R] and B as [L, R, N], and `lora_a`
/ `lora_b` are [L, S, R, K] / [L, N, R] views of them: the kernels' API shapes, with the rows the
CPU path's per-token form sums (`torch_lora.is_row_layout`) contiguous, so a decode step reads
each token's adapter in place instead of copying it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet import kernels
from torch import nn


@dataclass(frozen=True)
class LoraStep:
    """Which adapter slot each row of this step's flat batch uses, per projection group.

    A group (`qkv`, `o`, `gate_up`, `down`; MoE models: `router`, `experts`) that no row's adapter
    targets is absent, and its layers skip LoRA entirely: q/v-only adapters cost nothing in the
    MLP. The MoE block maps the `experts` rows onto composite expert slots itself (`layers/moe.py`).
    """

    groups: dict[str, kernels.LoraBatch]  # prepare_lora_batch of the group's row slots, for all layers
    backend: kernels.LoraBackend  # kernels.backend_for the model's device, resolved once


class LoRABuffers(nn.Module):
    """The stacked LoRA buffers of `num_slots` slots over fused output slices, and the LoRA math.

    The base of `LoRALinear` (one base weight) and of the MoE experts' layers (one base weight
    per expert, slot = expert * adapter slots + adapter slot: `layers/moe.py`).
    """

    def __init__(
        self,
        in_features: int,
        slices: tuple[tuple[str, int], ...],  # (module name, out features) in output order
        *,
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.slice_index = {name: s for s, (name, _) in enumerate(slices)}
        self.slice_widths = tuple(width for _, width in slices)
        self.slice_bounds: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, width in slices:
            self.slice_bounds[name] = (offset, offset + width)
            offset += width
        self.out_features = offset
        num_slices = len(slices)
        self.row_layout = device.type == "cpu"
        if self.row_layout:  # A [L, K, S, R], B [L, R, N]: the CPU path's per-token rows, contiguous
            a_shape, b_shape = (num_slots, in_features, num_slices, max_rank), (num_slots, max_rank, offset)
        else:  # the kernels' own shapes, as the Triton kernels read them best
            a_shape, b_shape = (num_slots, num_slices, max_rank, in_features), (num_slots, offset, max_rank)
        self.lora_a_storage = _buffer(*a_shape, dtype=dtype, device=device)
        self.lora_b_storage = _buffer(*b_shape, dtype=dtype, device=device)
        self.lora_scales = _buffer(num_slices, num_slots, dtype=torch.float32, device=device)

    @property
    def lora_a(self) -> torch.Tensor:  # [L, S, R, K], a view on the CPU
        a = self.lora_a_storage.data
        return a.permute(0, 2, 3, 1) if self.row_layout else a

    @property
    def lora_b(self) -> torch.Tensor:  # [L, N, R], a view on the CPU
        b = self.lora_b_storage.data
        return b.transpose(1, 2) if self.row_layout else b

    def set_lora(
        self, slot: int, name: str, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float
    ) -> None:
        """Writes one adapter's A [r, K] and B [N_s, r] for slice `name` into `slot`."""
        s, (lo, hi), rank = self.slice_index[name], self.slice_bounds[name], lora_a.shape[0]
        self.lora_a[slot, s].zero_()[:rank].copy_(lora_a)
        self.lora_b[slot, lo:hi].zero_()[:, :rank].copy_(lora_b)
        self.lora_scales.data[s, slot] = scale

    def reset_lora(self, slot: int) -> None:
        """Clears `slot`, so an adapter that does not target a slice adds nothing there."""
        self.lora_a_storage.data[slot].zero_()
        self.lora_b_storage.data[slot].zero_()
        self.lora_scales.data[:, slot] = 0.0

    def add_lora(
        self, out: torch.Tensor, x: torch.Tensor, meta: kernels.LoraBatch, backend: kernels.LoraBackend
    ) -> torch.Tensor:  # out [T, N] += LoRA(x [T, K]) for each row's slot in `meta`
        # The buffers are this layer's own, consistent by construction: no checks on this path.
        return backend.apply(out, x, self.lora_a, self.lora_b, self.lora_scales, self.slice_widths, meta)


class LoRALinear(LoRABuffers):
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
        super().__init__(
            in_features, slices, num_slots=max(max_loras, 1), max_rank=max_rank, dtype=dtype, device=device
        )
        self.group = group
        self.has_lora = max_loras > 0
        self.weight = nn.Parameter(
            torch.empty(self.out_features, in_features, dtype=dtype, device=device), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(self.out_features, dtype=dtype, device=device), requires_grad=False)
            if bias
            else None
        )

    def forward(self, x: torch.Tensor, lora: LoraStep | None) -> torch.Tensor:  # x [T, K] -> [T, N]
        out = torch.nn.functional.linear(x, self.weight, self.bias)
        meta = lora.groups.get(self.group) if lora is not None and self.has_lora else None
        if lora is None or meta is None:
            return out
        return self.add_lora(out, x, meta, lora.backend)


def _buffer(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device), requires_grad=False)
