"""Where each adapter slot's rank rows live, per projection group: the kernels' `AdapterPages`.

Owned by the model runner (loop thread only). The host lists say, per group and slot, which pages
hold the slot's adapter and its rank there (0: empty, or the adapter does not target the group), so
a step's LoRA set-up needs no device read. Every change rebuilds the group's `AdapterPages`, but
its device tensors (`page_table`, `ranks`) are allocated once and updated in place: a CUDA graph
captured with them reads the current placement at every replay. The copies are ordered on the
loop's stream, so a step already queued still sees the placement it was scheduled with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from lorafleet import kernels
from lorafleet.runtime.layers.moe import EXPERTS_GROUP, ExpertsLinear


class PageTables:
    def __init__(
        self,
        groups: list[str],
        num_slots: int,
        max_pages: int,
        device: torch.device,
        experts: ExpertsLinear | None,
    ) -> None:
        self.groups = groups
        self.num_slots = num_slots
        self.device = device
        self._max_pages = max_pages
        self._experts = experts
        self._slot_pages: dict[str, list[tuple[int, ...]]] = {g: [()] * num_slots for g in groups}
        self._slot_ranks = {g: [0] * num_slots for g in groups}
        self._device_tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pages: dict[str, kernels.AdapterPages] = {g: self._build(g) for g in groups}

    def assign(self, slot: int, pages: dict[str, tuple[int, ...]], ranks: dict[str, int]) -> None:
        """Points `slot` at its adapter's pages in every group (rank 0 where it has none)."""
        for group in self.groups:
            self._slot_pages[group][slot] = pages.get(group, ())
            self._slot_ranks[group][slot] = ranks[group]
            self.pages[group] = self._build(group)

    def clear(self, slots: Iterable[int]) -> None:
        """Empties vacated slots (their pages may go to another adapter)."""
        slots = list(slots)
        if not slots:
            return
        for group in self.groups:
            for slot in slots:
                self._slot_pages[group][slot] = ()
                self._slot_ranks[group][slot] = 0
            self.pages[group] = self._build(group)

    def targets(self, group: str, slot: int) -> bool:
        """Whether the adapter in `slot` has LoRA weights in `group`."""
        return self._slot_ranks[group][slot] > 0

    def _build(self, group: str) -> kernels.AdapterPages:
        ranks = self._slot_ranks[group]
        if group == EXPERTS_GROUP and self._experts is not None:  # one fixed page per expert and slot
            count = self._experts.num_experts * self.num_slots
            composite_ranks = [ranks[c % self.num_slots] for c in range(count)]
            built = kernels.build_adapter_pages(
                [[c] if rank else [] for c, rank in enumerate(composite_ranks)], composite_ranks,
                max_pages=1, page_rank=self._experts.page_rank,
            )
        else:
            built = kernels.build_adapter_pages(self._slot_pages[group], ranks, max_pages=self._max_pages)
        return self._on_device(group, built)

    def _on_device(self, group: str, built: kernels.AdapterPages) -> kernels.AdapterPages:
        """`built` (host tensors) with its tensors copied into the group's persistent device ones."""
        if group not in self._device_tables:
            self._device_tables[group] = (built.page_table.to(self.device, copy=True),
                                          built.ranks.to(self.device, copy=True))
        else:
            table, ranks = self._device_tables[group]
            table.copy_(built.page_table)
            ranks.copy_(built.ranks)
        table, ranks = self._device_tables[group]
        return dataclasses.replace(built, page_table=table, ranks=ranks)
