"""Grouped multi-LoRA in torch: one matmul pair per adapter present in the batch.

This is the CPU path (and the fallback when Triton is not available). It walks the slot
segments of a `LoraBatch`, so its cost grows with the number of distinct adapters, not with the
tokens. Each slot's delta is computed in float32 and added into `out` with one rounding.
"""

from __future__ import annotations

import torch
from lorafleet.kernels.batch import LoraBatch


def add_lora_sliced(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: list[int],  # S + 1 column offsets into N
    meta: LoraBatch,
) -> torch.Tensor:
    """Adds, for every slot with tokens, `scale * (x @ A_s.T) @ B_s.T` into each slice of out."""
    _, num_slices, rank, hidden_in = lora_a.shape
    counts = meta.slot_counts.tolist()
    starts = meta.slot_starts.tolist()
    for slot, (start, count) in enumerate(zip(starts, counts, strict=True)):
        if count == 0:
            continue
        rows = meta.sorted_tokens[start : start + count].long()  # [n]
        a = lora_a[slot].reshape(num_slices * rank, hidden_in).float()  # [S*R, K]
        shrunk = x[rows].float() @ a.T  # [n, S*R]
        for s in range(num_slices):
            begin, end = slice_offsets[s], slice_offsets[s + 1]
            scaled = shrunk[:, s * rank : (s + 1) * rank] * scales[s, slot]  # [n, R]: scale the small side
            delta = scaled @ lora_b[slot, begin:end].float().T  # [n, N_s]
            _add_rows(out[:, begin:end], rows, delta)
    return out


def _add_rows(out: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> None:
    """out[rows] += delta with one rounding; few temporaries (large CPU allocations page-fault)."""
    if out.dtype == torch.float32:
        out.index_add_(0, rows, delta)
    else:
        out.index_copy_(0, rows, delta.add_(out.index_select(0, rows)).to(out.dtype))
