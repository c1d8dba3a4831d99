"""A base linear layer (possibly several fused projections) with paged LoRA storage.

As in vLLM's LoRA layers, the layer owns its adapter buffers; the adapter residency (owned by the
scheduler) decides which slot and which pages an adapter lives in, and the model runner writes
the adapter into them. The buffers are the page pools of `lorafleet.kernels.add_lora_paged`, so
a fused projection (q|k|v, gate|up) runs its LoRA in one shrink and one expand for every adapter
of the batch, each at its own rank:

    lora_a [P, S, PR, K]   lora_b [P, N, PR]   scales [S, L] float32

with P = pages, PR = rank rows per page (`kernels.PAGE_RANK`), S = fused projections (slices),
N = sum of the slices' widths (B's rows line up with the output's columns), L = adapter slots.
A slot of rank r owns ceil(r / PR) pages of its group (`kernels.AdapterPages`), so a rank-8
adapter costs one page whatever else is loaded.

On the CPU the pages are stored transposed, A as [P, K, S, PR] and B as [P, PR, N], and `lora_a`
/ `lora_b` are [P, S, PR, K] / [P, N, PR] views of them: the kernels' API shapes, with the rows
the CPU path's per-token form sums contiguous, so a decode step reads each token's adapter in
place instead of copying it. A CPU layer also owns a `kernels.torch_slot_weights.SlotWeights`:
each adapter the grouped form runs, copied once into whole fp32 matrices and kept while the
placement is current, so its LoRA is one shrink GEMM and one `addmm_` per slice (issue 18).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lorafleet import kernels
from lorafleet.kernels import torch_lora
from lorafleet.kernels.torch_slot_weights import SlotWeights
from lorafleet.runtime.layers.dense import linear
from torch import nn


@dataclass(frozen=True)
class LoraStep:
    """Which adapter slot each row of this step's flat batch uses, and where the slots' pages are.

    `groups` holds one `LoraBatch` per projection group (`qkv`, `o`, `gate_up`, `down`; MoE models:
    `router`, `experts`) that some row's adapter targets; a group absent from it skips LoRA
    entirely (q/v-only adapters cost nothing in the MLP). Groups share one metadata object: a slot
    whose adapter does not target a group has rank 0 there, which the kernels leave untouched.
    The MoE block maps the `experts` rows onto composite expert slots itself (`layers/moe.py`).
    """

    groups: dict[str, kernels.LoraBatch]  # prepare_lora_batch of the rows' slots, for all layers
    pages: dict[str, kernels.AdapterPages]  # each group's placement of the slots into its pages
    backend: kernels.LoraBackend  # kernels.backend_for the model's device, resolved once


class LoRABuffers(nn.Module):
    """The LoRA page pool of one layer's fused output slices, and the LoRA math.

    The base of `LoRALinear` (one base weight) and of the MoE experts' layers (one base weight
    per expert; their slot = expert * adapter slots + adapter slot, one page of the largest rank
    per slot: `layers/moe.py`).
    """

    def __init__(
        self,
        in_features: int,
        slices: tuple[tuple[str, int], ...],  # (module name, out features) in output order
        *,
        num_slots: int,
        num_pages: int,
        page_rank: int,
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
        self.page_rank = page_rank
        self.row_layout = device.type == "cpu"
        self.lora_scales = _buffer(len(slices), num_slots, dtype=torch.float32, device=device)
        self.allocate_pages(num_pages, dtype=dtype, device=device)

    def allocate_pages(self, num_pages: int, *, dtype: torch.dtype, device: torch.device) -> None:
        """(Re)creates an empty pool of `num_pages` pages (the engine sizes it once, at start)."""
        k, s, pr, n = self.in_features, len(self.slice_widths), self.page_rank, self.out_features
        if self.row_layout:  # A [P, K, S, PR], B [P, PR, N]: the CPU path's per-token rows, contiguous
            a_shape, b_shape = (num_pages, k, s, pr), (num_pages, pr, n)
        else:  # the kernels' own shapes, as the Triton kernels read them best
            a_shape, b_shape = (num_pages, s, pr, k), (num_pages, n, pr)
        self.lora_a_storage = _buffer(*a_shape, dtype=dtype, device=device)
        self.lora_b_storage = _buffer(*b_shape, dtype=dtype, device=device)
        # the CPU path's per-slot copies of these pages (none on GPU: the kernels read pages)
        self.slot_weights = SlotWeights() if self.row_layout else None

    @property
    def num_pages(self) -> int:
        return self.lora_a_storage.shape[0]

    @property
    def page_bytes(self) -> int:
        """Bytes of one page: PR rank rows of A (S x K) and of B (N)."""
        element = self.lora_a_storage.element_size()
        return (len(self.slice_widths) * self.in_features + self.out_features) * self.page_rank * element

    @property
    def lora_a(self) -> torch.Tensor:  # [P, S, PR, K], a view on the CPU
        a = self.lora_a_storage.data
        return a.permute(0, 2, 3, 1) if self.row_layout else a

    @property
    def lora_b(self) -> torch.Tensor:  # [P, N, PR], a view on the CPU
        b = self.lora_b_storage.data
        return b.transpose(1, 2) if self.row_layout else b

    def clear(self, slot: int, pages: Sequence[int]) -> None:
        """Zeroes `pages` and `slot`'s scales, before an adapter is written there: pages are reused,
        and a slice the new adapter does not target (or targets at a lower rank than its other
        slices) must add nothing."""
        for page in pages:
            self.lora_a_storage.data[page].zero_()
            self.lora_b_storage.data[page].zero_()
        self.lora_scales.data[:, slot] = 0.0

    def write(
        self,
        slot: int,
        pages: Sequence[int],
        name: str,
        lora_a: torch.Tensor,  # [r, K]
        lora_b: torch.Tensor,  # [N_s, r]
        scale: float,
    ) -> None:
        """Writes one adapter's A and B for slice `name` into `pages` (rank rows in page order)."""
        s, (lo, hi), pr = self.slice_index[name], self.slice_bounds[name], self.page_rank
        rank = lora_a.shape[0]
        full = rank // pr  # pages filled whole: one indexed copy for all of them
        if full:
            index = torch.tensor(pages[:full], device=self.lora_a_storage.device)
            self.lora_a[index, s] = lora_a[: full * pr].reshape(full, pr, -1)
            self.lora_b[index, lo:hi] = lora_b[:, : full * pr].reshape(hi - lo, full, pr).transpose(0, 1)
        if rank > full * pr:  # the rest of the rank rows, in the next page
            rest = rank - full * pr
            self.lora_a[pages[full], s, :rest].copy_(lora_a[full * pr :])
            self.lora_b[pages[full], lo:hi, :rest].copy_(lora_b[:, full * pr :])
        self.lora_scales.data[s, slot] = scale

    def add_lora(
        self,
        out: torch.Tensor,  # [T, N]
        x: torch.Tensor,  # [T, K]
        meta: kernels.LoraBatch,
        pages: kernels.AdapterPages,
        backend: kernels.LoraBackend,
    ) -> torch.Tensor:  # out += LoRA(x) for each row's slot in `meta`
        # The buffers are this layer's own, consistent by construction: no checks on this path.
        if self.slot_weights is not None and backend.name == "torch":
            if torch_lora.repeat_kernel_call(out, x, meta, pages, self.slot_weights):  # decode steps
                return out
            return torch_lora.apply_paged(out, x, self.lora_a, self.lora_b, self.lora_scales,
                                          self.slice_widths, meta, pages, slot_weights=self.slot_weights)
        return backend.apply_paged(
            out, x, self.lora_a, self.lora_b, self.lora_scales, self.slice_widths, meta, pages
        )


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
        num_pages: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(
            in_features,
            slices,
            num_slots=max(max_loras, 1),
            num_pages=num_pages,
            page_rank=kernels.PAGE_RANK,
            dtype=dtype,
            device=device,
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
        out = linear(x, self.weight, self.bias)
        meta = lora.groups.get(self.group) if lora is not None and self.has_lora else None
        if lora is None or meta is None:
            return out
        return self.add_lora(out, x, meta, lora.pages[self.group], lora.backend)


def _buffer(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device), requires_grad=False)
