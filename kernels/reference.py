"""Plain-torch definition of batched multi-LoRA, written for clarity, not speed.

The tests compare every fast path (the grouped torch path and the Triton kernels) against
this file. One token at a time:

    out[t] += scales[l] * (x[t] @ lora_a[l].T) @ lora_b[l].T     where l = token_lora[t] >= 0

and, for paged adapters (`add_lora_paged`), A and B of slot l gathered row by row through its
page table up to its rank.
"""

from __future__ import annotations

import torch


def add_lora(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] float32
) -> torch.Tensor:
    """Adds each token's LoRA delta into `out`, in float32, with one rounding to out's dtype."""
    for t in range(x.shape[0]):
        slot = int(token_lora[t])
        if slot < 0:
            continue
        shrunk = x[t].float() @ lora_a[slot].float().T  # [R]
        delta = float(scales[slot]) * (shrunk @ lora_b[slot].float().T)  # [N]
        out[t] = (out[t].float() + delta).to(out.dtype)
    return out


def add_lora_sliced(
    out: torch.Tensor,  # [T, N], N = sum(slice_widths)
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] or [S, L] float32
    slice_widths: tuple[int, ...],  # S output widths, e.g. (q, k, v)
) -> torch.Tensor:
    """Fused projections (q/k/v, gate/up): slice s is an ordinary LoRA on columns of `out`."""
    begin = 0
    for s, width in enumerate(slice_widths):
        slice_scales = scales if scales.dim() == 1 else scales[s]
        columns = out[:, begin : begin + width]  # a view: writes land in out
        add_lora(columns, x, lora_a[:, s], lora_b[:, begin : begin + width], token_lora, slice_scales)
        begin += width
    return out


def add_lora_paged(
    out: torch.Tensor,  # [T, N], N = sum(slice_widths)
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] or [S, L] float32
    page_table: torch.Tensor,  # [L, max_pages] int, -1 = unused
    ranks: torch.Tensor,  # [L] int, 0 = empty slot
    slice_widths: tuple[int, ...],  # S output widths
) -> torch.Tensor:
    """Paged adapters: slot l's rank row ρ < ranks[l] is row ρ % PR of page page_table[l, ρ // PR].

    A token on slot -1 or on an empty slot (rank 0) is left untouched; rows past a slot's rank
    are never read.
    """
    page_rank = lora_a_pages.shape[2]
    for t in range(x.shape[0]):
        slot = int(token_lora[t])
        rank = int(ranks[slot]) if slot >= 0 else 0
        if rank == 0:
            continue
        rows = [(int(page_table[slot, rho // page_rank]), rho % page_rank) for rho in range(rank)]
        a = torch.stack([lora_a_pages[page, :, row] for page, row in rows], dim=1).float()  # [S, r, K]
        b = torch.stack([lora_b_pages[page, :, row] for page, row in rows], dim=1).float()  # [N, r]
        delta, begin = [], 0
        for s, width in enumerate(slice_widths):
            scale = float(scales[slot] if scales.dim() == 1 else scales[s, slot])
            delta.append(scale * ((a[s] @ x[t].float()) @ b[begin : begin + width].T))  # [N_s]
            begin += width
        out[t] = (out[t].float() + torch.cat(delta)).to(out.dtype)
    return out
