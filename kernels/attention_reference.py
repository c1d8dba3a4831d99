"""Plain-torch definition of paged attention, written for clarity, not speed.

The tests compare the Triton kernels and the torch CPU path against this file. One query token,
one head at a time, plain softmax in fp32 over exactly the keys it may see:

    key position p is visible to a query at position t   iff   p <= t  and  p > t - window
    scores = (q . k_p) * scale;  scores = cap * tanh(scores / cap)   (Gemma-2 soft-capping)
    out = softmax(scores) @ v                 (no visible key, i.e. an empty context: zeros)

Token p of a sequence lives in block `block_table[p // block_size]` at offset `p % block_size`.
"""

from __future__ import annotations

import torch


def attend_one(
    q: torch.Tensor,  # [H, D] one query token
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    block_table: torch.Tensor,  # [max_blocks] int
    position: int,  # the query's position; keys 0..position are cached
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [H, D] in q's dtype
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_heads = q.shape[0]
    first = 0 if sliding_window is None else max(0, position - sliding_window + 1)
    positions = torch.arange(first, position + 1)
    blocks = block_table.cpu()[positions // block_size].long()
    keys = k_cache.cpu()[blocks, positions % block_size].float()  # [n, KVH, D]
    values = v_cache.cpu()[blocks, positions % block_size].float()
    out = torch.zeros(num_heads, q.shape[1])
    for head in range(num_heads):
        kv_head = head // (num_heads // num_kv_heads)
        scores = (keys[:, kv_head] @ q[head].cpu().float()) * scale  # [n]
        if soft_cap is not None:
            scores = soft_cap * torch.tanh(scores / soft_cap)
        out[head] = torch.softmax(scores, dim=0) @ values[:, kv_head]
    return out.to(q.dtype).to(q.device)


def paged_decode_attention(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks]
    context_lens: torch.Tensor,  # [B]
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [B, H, D]
    """Sequence b's query sits at position context_lens[b] - 1 (its own key is cached)."""
    out = torch.zeros_like(q)
    for b, context in enumerate(context_lens.tolist()):
        if context > 0:
            out[b] = attend_one(q[b], k_cache, v_cache, block_tables[b], context - 1, scale=scale,
                                sliding_window=sliding_window, soft_cap=soft_cap)
    return out


def paged_prefill_attention(
    q: torch.Tensor,  # [T, H, D] the chunks of S sequences, packed
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor,  # [S + 1]
    start_pos: torch.Tensor,  # [S] tokens cached before each chunk
    block_tables: torch.Tensor,  # [S, max_blocks]
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [T, H, D]
    """Query j of chunk s sits at position start_pos[s] + j and sees keys up to it (causal)."""
    out = torch.zeros_like(q)
    bounds = cu_seqlens_q.tolist()
    for s, start in enumerate(start_pos.tolist()):
        for row in range(bounds[s], bounds[s + 1]):
            out[row] = attend_one(q[row], k_cache, v_cache, block_tables[s], start + row - bounds[s],
                                  scale=scale, sliding_window=sliding_window, soft_cap=soft_cap)
    return out
