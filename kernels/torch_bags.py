"""The CPU path's gathered form: each token reads its own adapter's pages, in a constant number of ops.

Two implementations (chosen by `torch_lora`): *in place* with `embedding_bag` on fp32 pages in
the row layout (A stored [P, K, S, PR], B [P, PR, N]), and *copied* (`index_select` of each
token's pages, then `bmm`) for any other layout or dtype. Both return the fp32 delta of n tokens
and read no rank row past a token's true rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lorafleet.kernels.pages import AdapterPages


@dataclass(frozen=True)
class PagedBags:
    """`embedding_bag` inputs for n tokens over their pages, built once per batch and placement.

    A token of rank r with J = ceil(r / PR) pages has J shrink bags (one per page: the K rows
    (page, k) of A^T viewed [P*K, S*PR], weighted by x) and S expand bags (one per slice: its r
    rank rows (page, q) of B^T viewed [P*PR, N], weighted by the scaled shrink of that row).
    """

    shrink_index: torch.Tensor  # [B*K]: bag b sums rows (page_b * K + k)
    shrink_offsets: torch.Tensor  # [B]
    bag_token: torch.Tensor | None  # [B] token of each bag; None when bag b is token b (one page each)
    bag_slot: torch.Tensor  # [B] slot of each bag, for its scales
    # [sum S*r]: the entry of the scaled shrink [B*S*PR] that weights each expand row; None: all, in order
    weight_index: torch.Tensor | None
    expand_index: torch.Tensor  # [sum S*r]: bag (token i, slice s) sums rows (page * PR + q), rank order
    expand_offsets: torch.Tensor  # [n*S]

    @staticmethod
    def of(slots: torch.Tensor, pages: AdapterPages, hidden_in: int, num_slices: int) -> PagedBags:
        """Bags of tokens on `slots` [n] int64 (all with rank > 0) under `pages`."""
        page_rank, device = pages.page_rank, slots.device
        ranks = pages.ranks.index_select(0, slots).long()  # [n]
        held = (ranks + page_rank - 1) // page_rank  # [n] pages per token
        width = int(held.max())
        table = pages.page_table.index_select(0, slots)[:, :width].long()  # [n, J]
        bag_pages = table[torch.arange(width, device=device) < held[:, None]]  # [B], token-major
        shrink = (bag_pages[:, None] * hidden_in + torch.arange(hidden_in, device=device)).view(-1)
        one_page_each = width == 1
        tokens = torch.arange(len(slots), device=device)
        rho = torch.arange(width * page_rank, device=device)  # [Rj] rank rows
        page_of_row, row_in_page = rho // page_rank, rho % page_rank
        rows = table.gather(1, page_of_row.expand(len(slots), -1)) * page_rank + row_in_page  # [n, Rj]
        live = (rho < ranks[:, None]).unsqueeze(1).expand(-1, num_slices, -1)  # [n, S, Rj]
        first_bag = torch.cumsum(held, 0) - held  # [n]
        s = torch.arange(num_slices, device=device).view(1, -1, 1)
        weight = ((first_bag.view(-1, 1, 1) + page_of_row) * num_slices + s) * page_rank + row_in_page
        exact = one_page_each and bool((ranks == page_rank).all())  # the stacked layout: identity
        starts = (torch.cumsum(ranks, 0) - ranks) * num_slices  # [n]
        return PagedBags(
            shrink_index=shrink,
            shrink_offsets=torch.arange(0, shrink.numel(), hidden_in, device=device),
            bag_token=None if one_page_each else tokens.repeat_interleave(held),
            bag_slot=slots.repeat_interleave(held),
            weight_index=None if exact else weight[live],
            expand_index=rows.unsqueeze(1).expand(-1, num_slices, -1)[live],
            expand_offsets=(starts[:, None] + ranks[:, None] * s.view(1, -1)).view(-1),
        )


def bagged_delta(
    x: torch.Tensor,  # [n, K] float32
    lora_a_pages: torch.Tensor,  # [P, S, PR, K] float32, row layout
    lora_b_pages: torch.Tensor,  # [P, N, PR] float32, row layout
    scales: torch.Tensor,  # [S, L] float32
    slice_columns: torch.Tensor | None,  # [N] int64 into [S*N], None for one slice
    bags: PagedBags,
) -> torch.Tensor:  # [n, N] float32
    """The fp32 delta of n tokens, each reading its adapter's pages in place (no weight copy).

    `embedding_bag(mode="sum", per_sample_weights=...)` is a fused gather + weighted row sum:
    the shrink sums, per token and page, the K rows of A^T [S*PR] weighted by x; the expand sums,
    per token and slice, its r rows of B^T [N] weighted by that slice's scaled shrink, and keeps
    the slice's own columns. (The expand computes all N columns per slice, S-fold work on a B
    that is small here, rather than copying the strided column slices of B every call.)
    """
    num_pages, num_slices, page_rank, hidden_in = lora_a_pages.shape
    a_rows = lora_a_pages.permute(0, 3, 1, 2).reshape(num_pages * hidden_in, num_slices * page_rank)  # a view
    b_rows = lora_b_pages.transpose(1, 2).reshape(num_pages * page_rank, -1)  # [P*PR, N], a view
    x_bags = x if bags.bag_token is None else x.index_select(0, bags.bag_token)  # [B, K]
    shrunk = F.embedding_bag(  # [B, S*PR]
        bags.shrink_index, a_rows, bags.shrink_offsets, mode="sum", per_sample_weights=x_bags.reshape(-1)
    )
    scaled = shrunk.view(-1, num_slices, page_rank) * scales.T.index_select(0, bags.bag_slot).unsqueeze(-1)
    weights = scaled.view(-1)  # [sum S*r] in bag order
    if bags.weight_index is not None:
        weights = weights.index_select(0, bags.weight_index)
    expanded = F.embedding_bag(  # [n*S, N]: slice s of token i in row i*S + s
        bags.expand_index, b_rows, bags.expand_offsets, mode="sum", per_sample_weights=weights
    )
    if slice_columns is None:
        return expanded
    return expanded.view(x.shape[0], -1).index_select(1, slice_columns)  # [n, N]: each slice's own columns


def slice_columns(slice_offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[N] int64: column c of slice s (offsets[s] <= c < offsets[s+1]) at s*N + c in [S*N]."""
    width, bounds = slice_offsets[-1], zip(slice_offsets[:-1], slice_offsets[1:], strict=True)
    return torch.cat([torch.arange(lo, hi, device=device) + s * width for s, (lo, hi) in enumerate(bounds)])


def copied_delta(
    x: torch.Tensor,  # [n, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    slots: torch.Tensor,  # [n] int64, all with rank > 0
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: tuple[int, ...],
    pages: AdapterPages,
    max_pages: int,  # J: the most pages any of the n tokens uses
) -> torch.Tensor:  # [n, N] float32
    """The fp32 delta of n tokens, each with its own adapter's pages gathered (copied)."""
    n = slots.numel()
    _, num_slices, page_rank, hidden_in = lora_a_pages.shape
    held = max_pages * page_rank
    # Tokens with fewer pages read page 0 in the unused places; the mask below discards it.
    table = pages.page_table.index_select(0, slots)[:, :max_pages].clamp(min=0).view(-1)  # [n*J]
    a = lora_a_pages.index_select(0, table).float().view(n, max_pages * num_slices * page_rank, hidden_in)
    shrunk = torch.bmm(a, x.float().unsqueeze(-1)).view(n, max_pages, num_slices, page_rank)
    shrunk = shrunk.transpose(1, 2).reshape(n, num_slices, held)  # [n, S, J*PR]
    b = lora_b_pages.index_select(0, table).float().view(n, max_pages, -1, page_rank)
    b = b.permute(0, 2, 1, 3).reshape(n, -1, held)  # [n, N, J*PR] (a view for one page)
    ranks = pages.ranks.index_select(0, slots)  # [n]
    if not bool((ranks == held).all()):  # rows past a token's rank: zero, whatever the pool holds
        keep = (torch.arange(held, device=x.device) < ranks[:, None]).unsqueeze(1)  # [n, 1, J*PR]
        shrunk = torch.where(keep, shrunk, 0.0)
        b = torch.where(keep, b, 0.0)
    shrunk = shrunk * scales.index_select(1, slots).T.unsqueeze(-1)  # scale the small side
    if num_slices == 1:
        return torch.bmm(b, shrunk.view(n, held, 1)).view(n, -1)
    parts = [
        torch.bmm(b[:, slice_offsets[s] : slice_offsets[s + 1]], shrunk[:, s].unsqueeze(-1)).squeeze(-1)
        for s in range(num_slices)
    ]  # S x [n, N_s]
    return torch.cat(parts, dim=1)
