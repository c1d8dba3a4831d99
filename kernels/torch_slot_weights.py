"""The CPU path's grouped form, planned: each adapter's A and B as whole matrices, kept across steps.

A slot of rank r spans ceil(r / PR) pages of the pool. Read from the pages, its shrink is a
batched matmul over pages followed by per-slice reshapes, and its expand reads strided column
views of B: a dozen small ops per adapter and layer, each paying MKL's fixed cost of packing and
thread hand-off (tens of µs) on a few rows. `SlotWeights` copies a slot's rank rows once into

    a  [K, S·r]   fp32, slice s in columns s·r .. (s+1)·r    (so the shrink is one GEMM)
    b  S × [r, N_s] fp32, contiguous                         (so each expand is one `addmm_`)

and keeps them while the placement they were built for (`AdapterPages`, one object per placement:
`kernels.pages`) is the one the steps run with. A new placement drops every copy: a placement's
slots and pages never change while it is current (the engine writes an adapter's pages before
the placement that points at them exists, `runtime/engine/model_runner.py`), so a copy is never
staler than the pages themselves. Scales are not copied: they are read at each call.

Cost: memory. The copies hold the fp32 rank rows of every slot the grouped form ran under the
current placement, at most one more copy of the layer's occupied pages (fp32). The engine's CPU
layers own one `SlotWeights` each (`runtime/layers/lora_linear.py`); GPU layers none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet.kernels.pages import AdapterPages


@dataclass(frozen=True)
class SlotMatrices:
    """One slot's rank rows as contiguous fp32 matrices (see the module docstring)."""

    rank: int
    a: torch.Tensor  # [K, S * rank]
    b: tuple[torch.Tensor, ...]  # per slice [rank, N_s]

    @property
    def nbytes(self) -> int:
        return self.a.numel() * 4 + sum(b.numel() * 4 for b in self.b)


class SlotWeights:
    """Per-slot contiguous copies of one layer's adapter pages, for the current placement only.

    Owned by the layer whose pages they copy, and used on the thread that runs its steps.
    """

    def __init__(self) -> None:
        self._placement: AdapterPages | None = None
        self._slots: dict[int, SlotMatrices] = {}

    @property
    def nbytes(self) -> int:
        """Bytes the copies hold now."""
        return sum(matrices.nbytes for matrices in self._slots.values())

    def of(
        self,
        lora_a_pages: torch.Tensor,  # [P, S, PR, K], any layout
        lora_b_pages: torch.Tensor,  # [P, N, PR]
        pages: AdapterPages,
        slot: int,
        slice_offsets: tuple[int, ...],  # S + 1 column offsets
    ) -> SlotMatrices:
        """`slot`'s matrices under `pages`, copied from the pool on first use (rank > 0)."""
        if pages is not self._placement:
            self._placement = pages
            self._slots.clear()
        matrices = self._slots.get(slot)
        if matrices is None:
            matrices = self._slots[slot] = _copy_slot(lora_a_pages, lora_b_pages, pages, slot, slice_offsets)
        return matrices


def _copy_slot(
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    pages: AdapterPages,
    slot: int,
    slice_offsets: tuple[int, ...],
) -> SlotMatrices:
    rank, held = pages.slot_ranks[slot], list(pages.slot_pages[slot])
    index = torch.tensor(held, device=lora_a_pages.device)
    _, num_slices, page_rank, hidden_in = lora_a_pages.shape
    # [J, S, PR, K] -> [K, S, J*PR]: rank row j*PR + q of slice s at column (s, j*PR + q)
    a = lora_a_pages.index_select(0, index).permute(3, 1, 0, 2).reshape(hidden_in, num_slices, -1)
    a = a[:, :, :rank].reshape(hidden_in, num_slices * rank).float().contiguous()
    b = lora_b_pages.index_select(0, index).permute(0, 2, 1).reshape(len(held) * page_rank, -1)[:rank]
    per_slice = tuple(
        b[:, slice_offsets[s] : slice_offsets[s + 1]].float().contiguous() for s in range(num_slices)
    )
    return SlotMatrices(rank, a, per_slice)
