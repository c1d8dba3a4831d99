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
staler than the pages themselves. Scales are not copied: they are read at each call (but
`native_call` keeps them with the kernel's arguments for the placement's life, which is safe
for the same reason: a slot's scales are written with its pages, before its placement exists).

Where the CPU LoRA kernel is built (`kernels/native_cpu.py`), A is kept as its transpose,
`a_rows` [S·r, K] (the rows the kernel streams), `a` being a view of it, and `native_call` hands
the kernel one layer call's segments at once: the same arguments for every call of a step's
metadata, built on its first call.

Cost: memory. The copies hold the fp32 rank rows of every slot the grouped form ran under the
current placement, at most one more copy of the layer's occupied pages (fp32). The engine's CPU
layers own one `SlotWeights` each (`runtime/layers/lora_linear.py`); GPU layers none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet.kernels import native_cpu
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.pages import AdapterPages

# The CPU kernel's arguments for one layer call: each segment's first and end rows, its slot's
# a_rows, the slices' B and scales (segment-major), and the slices' column offsets.
NativeCall = tuple[list[int], list[int], list[torch.Tensor], list[torch.Tensor], list[int], list[float]]


@dataclass(frozen=True)
class SlotMatrices:
    """One slot's rank rows as fp32 matrices (see the module docstring)."""

    rank: int
    a: torch.Tensor  # [K, S * rank]: contiguous, or a view of a_rows where the CPU kernel is built
    b: tuple[torch.Tensor, ...]  # per slice [rank, N_s], contiguous
    a_rows: torch.Tensor | None = None  # [S * rank, K] contiguous: the CPU kernel's A

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
        self._call: tuple[LoraBatch, NativeCall] | None = None  # the last step's kernel arguments

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
        self._follow(pages)
        matrices = self._slots.get(slot)
        if matrices is None:
            matrices = self._slots[slot] = _copy_slot(lora_a_pages, lora_b_pages, pages, slot, slice_offsets)
        return matrices

    def native_call(
        self,
        lora_a_pages: torch.Tensor,  # [P, S, PR, K]
        lora_b_pages: torch.Tensor,  # [P, N, PR]
        scales: torch.Tensor,  # [S, L] float32
        pages: AdapterPages,
        meta: LoraBatch,
        segments: list[tuple[int, int, int]],  # (slot, first row, end row) of each live slot
        slice_offsets: tuple[int, ...],
    ) -> NativeCall:
        """The CPU kernel's arguments for this batch's segments; built on the first call with this
        metadata (every layer call of a step, and of the next steps while the batch keeps its rows
        and adapters, passes the same object) and reused after. Scales are read then: like the
        pages, a placement's scales are written before the placement exists."""
        self._follow(pages)
        if self._call is not None and self._call[0] is meta:
            return self._call[1]
        scale_of = scales.tolist()
        firsts: list[int] = []
        ends: list[int] = []
        a_rows: list[torch.Tensor] = []
        b: list[torch.Tensor] = []
        alphas: list[float] = []
        for slot, first, end in segments:
            matrices = self.of(lora_a_pages, lora_b_pages, pages, slot, slice_offsets)
            assert matrices.a_rows is not None  # made whenever the kernel is built
            firsts.append(first)
            ends.append(end)
            a_rows.append(matrices.a_rows)
            b.extend(matrices.b)
            alphas.extend(scale_of[s][slot] for s in range(len(matrices.b)))
        call = (firsts, ends, a_rows, b, list(slice_offsets), alphas)
        self._call = (meta, call)
        return call

    def last_call(self, meta: LoraBatch, pages: AdapterPages) -> NativeCall | None:
        """The kernel's arguments of the last call that ran on it, if it had this metadata under
        this placement; else None."""
        call = self._call
        if call is not None and call[0] is meta and pages is self._placement:
            return call[1]
        return None

    def _follow(self, pages: AdapterPages) -> None:
        """Drops every copy made for another placement than `pages`."""
        if pages is not self._placement:
            self._placement = pages
            self._slots.clear()
            self._call = None


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
    a = a[:, :, :rank].reshape(hidden_in, num_slices * rank).float()
    a_rows = None
    if native_cpu.lora_kernel() is not None:  # the kernel's rows; MKL reads the same copy transposed
        a_rows = a.t().contiguous()
        a = a_rows.t()
    else:
        a = a.contiguous()
    b = lora_b_pages.index_select(0, index).permute(0, 2, 1).reshape(len(held) * page_rank, -1)[:rank]
    per_slice = tuple(
        b[:, slice_offsets[s] : slice_offsets[s + 1]].float().contiguous() for s in range(num_slices)
    )
    return SlotMatrices(rank, a, per_slice, a_rows)
