"""Which tokens of a batch the CPU path works on, for one placement: those whose slot holds an
adapter (rank > 0). Counted once per (batch, placement) from host copies and cached on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.pages import AdapterPages


@dataclass(frozen=True)
class LiveTokens:
    """The live tokens of one batch under one placement.

    Attributes:
        num_tokens: T, tokens whose slot holds an adapter.
        num_slots: D, distinct such slots.
        page_rows: sum over those tokens of their pages × page_rank (A rows the shrink sums).
        rank_rows: sum over those tokens of their ranks (B rows the expand sums).
        max_pages: the most pages one of them uses.
        rows: [T] int64 rows of the batch, grouped by slot; None when every row of the batch is
            live, so the gathered form can work on row ranges in batch order.
    """

    num_tokens: int
    num_slots: int
    page_rows: int
    rank_rows: int
    max_pages: int
    rows: torch.Tensor | None

    def elements_per_token(self, hidden_in: int, num_slices: int, hidden_out: int) -> int:
        """E: A and B elements the gathered form reads per live token, on average."""
        total = num_slices * hidden_in * self.page_rows + hidden_out * self.rank_rows
        return total // max(self.num_tokens, 1)


def live_tokens(meta: LoraBatch, pages: AdapterPages) -> LiveTokens:
    """Counts the live tokens of `meta` under `pages` (one read of the per-slot counts)."""
    counts = meta.slot_counts.tolist()
    live = [slot for slot, count in enumerate(counts) if count > 0 and pages.slot_ranks[slot] > 0]
    num_live = sum(counts[slot] for slot in live)
    rows = None
    if num_live < meta.num_tokens:
        if num_live == sum(counts):  # every token with a slot is live: the sorted prefix
            rows = meta.sorted_tokens[:num_live].long()
        else:  # some tokens sit on empty slots: keep the live slots' runs of sorted rows
            starts = meta.slot_starts.tolist()
            runs = [meta.sorted_tokens[starts[slot] : starts[slot] + counts[slot]] for slot in live]
            rows = torch.cat(runs).long() if runs else meta.sorted_tokens[:0].long()
    return LiveTokens(
        num_tokens=num_live,
        num_slots=len(live),
        page_rows=sum(counts[slot] * len(pages.slot_pages[slot]) for slot in live) * pages.page_rank,
        rank_rows=sum(counts[slot] * pages.slot_ranks[slot] for slot in live),
        max_pages=max((len(pages.slot_pages[slot]) for slot in live), default=0),
        rows=rows,
    )
