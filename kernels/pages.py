"""Where each adapter slot's rank rows live in a projection group's page pool.

Adapter weights are stored in pages of `PAGE_RANK` rank rows, like the KV cache's blocks: a
page holds those rows for every slice of the group (A pages `[P, S, PAGE_RANK, K]`, B pages
`[P, N, PAGE_RANK]`). An adapter of rank r takes `ceil(r / PAGE_RANK)` pages, anywhere in the
pool; its rank row ρ is row `ρ % PAGE_RANK` of page `page_table[slot, ρ // PAGE_RANK]`. No slot
is padded to the largest rank: a rank-8 adapter costs one page whatever else is loaded.

`AdapterPages` is one group's placement, built by `build_adapter_pages` when an adapter is
placed or removed and reused by every step until the next change. It carries the device tensors
the kernels read (`page_table`, `ranks`) and host copies of the same facts, so the CPU path can
pick its form and find each slot's pages without a device read per layer.

The stacked layout of `add_lora_sliced` (`[L, S, R, K]`, every slot padded to R) is the special
case of one page of R rows per slot: `stacked_pages(L, R, device)`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lorafleet.kernels.errors import LoraKernelError

PAGE_RANK = 8  # rank rows per page: the smallest common LoRA rank, so rank 8 wastes nothing


def pages_for_rank(rank: int, page_rank: int = PAGE_RANK) -> int:
    """Pages an adapter of `rank` occupies: ceil(rank / page_rank)."""
    return -(-rank // page_rank)


# eq=False: hashed by identity, so a placement can key per-batch caches (`LoraBatch.derived`)
# without hashing its tensors; a new placement is a new object and never hits a stale entry.
@dataclass(frozen=True, eq=False)
class AdapterPages:
    """One projection group's placement of adapter slots into pages; see `build_adapter_pages`.

    Attributes:
        page_table: [L, max_pages] int32 on the device: page of each slot's rank rows, -1 unused.
        ranks: [L] int32 on the device: each slot's true rank, 0 for an empty slot.
        page_rank: rank rows per page (`PAGE_RANK`, or R for the stacked layout).
        slot_pages: host copy, per slot, of the pages it uses in rank order.
        slot_ranks: host copy of `ranks`.
        first_page: per slot, its first page when its pages are consecutive and ascending
            (a plain slice of the pool), else -1.
    """

    page_table: torch.Tensor
    ranks: torch.Tensor
    page_rank: int
    slot_pages: tuple[tuple[int, ...], ...]
    slot_ranks: tuple[int, ...]
    first_page: tuple[int, ...]

    @property
    def num_slots(self) -> int:
        return len(self.slot_ranks)

    @property
    def max_pages(self) -> int:
        """Width of the page table: pages one slot may hold, so the largest rank is this × page_rank."""
        return self.page_table.shape[1]

    @property
    def max_rank(self) -> int:
        return self.max_pages * self.page_rank

    @property
    def pages_used(self) -> int:
        return sum(len(pages) for pages in self.slot_pages)

    @property
    def highest_page(self) -> int:
        """The largest page id in use, -1 when every slot is empty."""
        return max((max(pages) for pages in self.slot_pages if pages), default=-1)

    @property
    def device(self) -> torch.device:
        return self.page_table.device


def build_adapter_pages(
    slot_pages: Sequence[Sequence[int]],
    ranks: Sequence[int],
    *,
    max_pages: int,
    page_rank: int = PAGE_RANK,
    device: torch.device | str = "cpu",
) -> AdapterPages:
    """The placement of L slots: slot l's rank rows in pages `slot_pages[l]`, in rank order.

    Args:
        slot_pages: per slot, the page ids holding its rank rows 0.., 8 (page_rank) rows a page;
            exactly `ceil(ranks[l] / page_rank)` of them, any ids, in any order across slots,
            never one page in two places. Empty for an empty slot.
        ranks: per slot, the adapter's true rank (the largest over the group's slices), 0 when
            empty. Rows past the rank inside the last page are never read.
        max_pages: width of the page table, fixed for the group (largest rank / page_rank), so
            kernel shapes do not change when adapters come and go.
        page_rank: rank rows per page.
        device: where the kernels will read the table.

    Raises:
        LoraKernelError (a ValueError): a page count that does not match the rank, a rank the
            slot's pages cannot hold, a negative rank or page id, a page used twice.

    Example:
        >>> pages = build_adapter_pages([[3], [], [0, 5]], [8, 0, 16], max_pages=8)
        >>> pages.page_table[2, :3].tolist(), pages.first_page
        ([0, 5, -1], (3, -1, -1))
    """
    if len(slot_pages) != len(ranks) or not ranks:
        raise LoraKernelError(f"need one page list per slot and at least one slot; got "
                              f"{len(slot_pages)} page lists for {len(ranks)} ranks")
    if max_pages < 1 or page_rank < 1:
        raise LoraKernelError(f"max_pages and page_rank must be >= 1, got {max_pages} and {page_rank}")
    pages = tuple(tuple(int(p) for p in slot) for slot in slot_pages)
    slot_ranks = tuple(int(r) for r in ranks)
    seen: dict[int, int] = {}
    for slot, (held, rank) in enumerate(zip(pages, slot_ranks, strict=True)):
        _check_slot(slot, held, rank, max_pages, page_rank, seen)
    table = torch.full((len(pages), max_pages), -1, dtype=torch.int32)
    for slot, held in enumerate(pages):
        table[slot, : len(held)] = torch.tensor(held, dtype=torch.int32)
    return AdapterPages(
        page_table=table.to(device),
        ranks=torch.tensor(slot_ranks, dtype=torch.int32).to(device),
        page_rank=page_rank,
        slot_pages=pages,
        slot_ranks=slot_ranks,
        first_page=tuple(_first_page(held) for held in pages),
    )


def _check_slot(
    slot: int, held: tuple[int, ...], rank: int, max_pages: int, page_rank: int, seen: dict[int, int]
) -> None:
    """Raises for a slot whose pages cannot hold exactly its rank, or reuse another's page."""
    needed = pages_for_rank(rank, page_rank)
    if rank < 0:
        raise LoraKernelError(f"slot {slot}: rank must be >= 0, got {rank}")
    if needed > max_pages:
        raise LoraKernelError(
            f"slot {slot}: rank {rank} needs {needed} pages of {page_rank} rows, more than the "
            f"page table's max_pages {max_pages} hold ({max_pages * page_rank} rows)"
        )
    if len(held) != needed:
        raise LoraKernelError(
            f"slot {slot}: rank {rank} is held by ceil({rank} / {page_rank}) = {needed} pages, "
            f"got {len(held)} ({list(held)})"
        )
    for page in held:
        if page < 0:
            raise LoraKernelError(f"slot {slot}: page ids must be >= 0, got {list(held)}")
        if page in seen:
            where = f"by slot {slot}" if seen[page] == slot else f"by slots {seen[page]} and {slot}"
            raise LoraKernelError(f"page {page} is used twice {where}")
        seen[page] = slot


def _first_page(held: tuple[int, ...]) -> int:
    if held and all(b == a + 1 for a, b in zip(held, held[1:], strict=False)):
        return held[0]
    return -1


@functools.lru_cache(maxsize=64)
def stacked_pages(num_slots: int, rank: int, device: torch.device) -> AdapterPages:
    """The stacked layout `[L, S, R, K]` as pages: slot l is page l, R rows, every slot rank R.

    Cached, so `add_lora_sliced` builds it once per shape and its per-batch caches are reused.
    """
    return build_adapter_pages(
        [[slot] for slot in range(num_slots)], [rank] * num_slots, max_pages=1, page_rank=rank, device=device
    )
