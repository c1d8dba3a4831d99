"""Paged attention in torch for the CPU: batched, fp32, memory linear in the context.

Same signatures and semantics as the Triton kernels (`attention_reference` is the definition).
K/V are gathered (a copy: torch cannot read through a block table in place), but only the blocks
holding visible keys, whole blocks at a time (`index_select`: contiguous copies), and never more
than GATHER_ELEMENTS at once: decode cuts the batch into groups, prefill cuts each chunk's queries
into row groups, so the scores are [rows, keys] for a bounded number of rows, never [T, T].
Scores and outputs are one `bmm` per KV head on strided views of the gathered blocks (no second
copy into a head-major layout). Invisible keys are masked to -inf and their values to 0 (a cache
slot nobody may see can hold anything, NaN included); block-table entries that hold no visible
key are never dereferenced. Host syncs (`.tolist()`, `.max()`) are free on the CPU.
"""

from __future__ import annotations

import torch

GATHER_ELEMENTS = 1 << 24  # elements of K (and of V) gathered per group: 64 MiB in fp32


def _gather(
    cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    tables: torch.Tensor,  # [R, nb] int64, entries already replaced where unused
) -> torch.Tensor:  # [R, nb * block_size, KVH, D] fp32, contiguous
    rows, nb = tables.shape
    _, block_size, kv_heads, dim = cache.shape
    blocks = cache.index_select(0, tables.reshape(-1))  # whole blocks, contiguous copies
    return blocks.view(rows, nb * block_size, kv_heads, dim).float()


def _softmax_rows(
    q: torch.Tensor,  # [R, KVH, M, D] fp32: M query rows (heads x tokens) per KV head
    keys: torch.Tensor,  # [R, c, KVH, D] fp32
    values: torch.Tensor,  # [R, c, KVH, D] fp32, 0 where no row may look
    visible: torch.Tensor,  # [R, M or 1, c] bool
    scale: float,
    soft_cap: float | None,
) -> torch.Tensor:  # [R, KVH, M, D]
    kv_heads = keys.shape[2]
    scores = torch.stack([torch.bmm(q[:, k], keys[:, :, k].transpose(1, 2)) for k in range(kv_heads)], 1)
    scores.mul_(scale)  # [R, KVH, M, c]
    if soft_cap is not None:
        scores = soft_cap * torch.tanh(scores / soft_cap)
    scores.masked_fill_(~visible[:, None], float("-inf"))
    peak = scores.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # rows that see nothing
    weights = scores.sub_(peak).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    out = torch.stack([torch.bmm(weights[:, k], values[:, :, k]) for k in range(kv_heads)], 1)
    return out.div_(torch.where(total > 0, total, torch.ones_like(total)))


def paged_decode_attention(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks]
    context_lens: torch.Tensor,  # [B]
    out: torch.Tensor,  # [B, H, D]
    *,
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if batch == 0:
        return out
    max_context = block_tables.shape[1] * block_size
    context = context_lens.long().clamp(0, max_context)  # [B]
    first = context - sliding_window if sliding_window is not None else torch.zeros_like(context)
    first = first.clamp(min=0)
    first_block = int(first.min()) // block_size  # blocks before every window are skipped
    end_block = -(-int(context.max()) // block_size)
    if end_block <= first_block:  # every context is empty (padded rows): zeros
        return out.zero_()
    num_blocks = end_block - first_block
    group = max(1, GATHER_ELEMENTS // (num_blocks * block_size * num_kv_heads * head_dim))
    positions = torch.arange(first_block * block_size, end_block * block_size, device=q.device)  # [c]
    for b0 in range(0, batch, group):
        rows = slice(b0, min(batch, b0 + group))
        visible = (positions[None, :] >= first[rows, None]) & (positions[None, :] < context[rows, None])
        tables = block_tables[rows, first_block:end_block].long()
        used = visible.view(-1, num_blocks, block_size).any(dim=-1)
        tables = torch.where(used, tables, torch.zeros_like(tables))  # never follow unused entries
        keys = _gather(k_cache, tables)  # [b, c, KVH, D]
        values = _gather(v_cache, tables).masked_fill_(~visible[:, :, None, None], 0.0)
        query = q[rows].float().view(-1, num_kv_heads, num_heads // num_kv_heads, head_dim)
        result = _softmax_rows(query, keys, values, visible[:, None, :], scale, soft_cap)  # [b, KVH, G, D]
        out[rows] = result.view(-1, num_heads, head_dim).to(out.dtype)
    return out


def paged_prefill_attention(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,  # [T, H, D]
    *,
    cu_seqlens_q: torch.Tensor,  # [S + 1]
    start_pos: torch.Tensor,  # [S]
    block_tables: torch.Tensor,  # [S, max_blocks]
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:
    _, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    bounds = cu_seqlens_q.tolist()
    max_context = block_tables.shape[1] * block_size
    for seq, start in enumerate(start_pos.tolist()):
        q_begin, length = bounds[seq], bounds[seq + 1] - bounds[seq]
        if length <= 0:
            continue
        end = min(start + length, max_context)
        first = 0 if sliding_window is None else max(0, start - sliding_window + 1)
        if end <= first:  # the chunk lies past its block table: nothing it may read
            out[q_begin : q_begin + length] = 0
            continue
        first_block, end_block = first // block_size, -(-end // block_size)
        tables = block_tables[seq, first_block:end_block].long()[None]
        keep = slice(first - first_block * block_size, end - first_block * block_size)
        keys = _gather(k_cache, tables)[:, keep]  # [1, c, KVH, D]: every key some query sees
        values = _gather(v_cache, tables)[:, keep]
        key_pos = torch.arange(first, end, device=q.device)  # [c]
        rows_per_group = max(1, GATHER_ELEMENTS // max(1, num_heads * key_pos.numel()))
        for j0 in range(0, length, rows_per_group):
            n = min(length, j0 + rows_per_group) - j0
            q_pos = torch.arange(start + j0, start + j0 + n, device=q.device)[:, None]  # [n, 1]
            visible = key_pos[None, :] <= q_pos
            if sliding_window is not None:
                visible &= key_pos[None, :] > q_pos - sliding_window
            rows = slice(q_begin + j0, q_begin + j0 + n)
            query = q[rows].float().view(n, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
            query = query.reshape(1, num_kv_heads, group * n, head_dim)  # rows (head g, token j) g-major
            result = _softmax_rows(query, keys, values, visible.repeat(group, 1)[None], scale, soft_cap)
            out[rows] = result.view(num_kv_heads, group, n, head_dim).permute(2, 0, 1, 3).reshape(
                n, num_heads, head_dim).to(out.dtype)
    return out
