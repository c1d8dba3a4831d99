"""Attention over the paged KV cache.

The cache of one layer is `k_cache`/`v_cache` [num_blocks, block_size, KVH, D]; a sequence's
tokens live in the blocks its block table lists, in order. Each step first writes the new
keys/values at their slots, then attends:

- decode rows (one new token per sequence) are batched. Where the CPU kernels are built
  (`kernels/native_cpu.py`), fp32 rows on the CPU attend to their blocks in place, one call a
  layer (`kernels/csrc/attention_cpu.cpp`). Otherwise the blocks of every sequence are gathered
  into [B, max_blocks * block_size] and padded positions are masked out. The query heads that
  share a KV head go in as that head's rows ([B, KVH, H/KVH, D] against [B, KVH, C, D]), so one
  SDPA call reads each KV head once per sequence: the same math as SDPA's own `enable_gqa` (one
  query row per head), in a quarter to a third less time on the CPU with 7 query heads per KV head
  and about the same with 3 (`benchmarks/cpu_attention.py`);
- prefill chunks run one sequence at a time with a causal mask offset by the tokens already cached.

Both use `torch.nn.functional.scaled_dot_product_attention`, which on CUDA dispatches to its fused
(flash / memory-efficient) kernels and on the CPU to its fused C++ path. Gemma 2's score
soft-capping (`soft_cap * tanh(scores / soft_cap)` before the mask and softmax) has no SDPA form:
with `soft_cap` set, the same masks go through the explicit matmul-softmax-matmul of
transformers' eager attention. `sliding_window` is per call, so each layer passes its own.

Metadata carrying `kernel` (built by the model runner on CUDA) takes the paged kernels' path
instead, which reads the cache in place: `layers/attention_cuda.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import torch
import torch.nn.functional as F
from lorafleet.kernels import native_cpu
from lorafleet.runtime.layers import attention_cuda


@dataclass(frozen=True)
class PrefillSpan:
    """One sequence's prefill chunk inside the flat batch."""

    token_start: int  # first row of the chunk in the flat [T] batch
    token_end: int
    start_pos: int  # position of the chunk's first token (= tokens already in the cache)
    block_table: torch.Tensor  # [num_blocks_of_seq] int64


@dataclass(frozen=True)
class DecodeGroup:
    """Sequences that add exactly one token this step."""

    token_index: torch.Tensor  # [B] rows of the flat batch
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with 0
    context_lens: torch.Tensor  # [B] int64, tokens in the cache after this step's write
    # Visibility masks [B, 1, 1, C] by sliding window, and their additive forms by dtype, built
    # by the first layer of the step that needs one and reused by every later layer (they all see
    # the same contexts).
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    biases: dict[tuple[int | None, torch.dtype], torch.Tensor] = field(
        default_factory=dict, compare=False, repr=False
    )

    def mask(self, window: int | None, context: int) -> torch.Tensor:
        """True where a row's key is visible: inside its context (and its window)."""
        if window not in self.masks:
            key_pos = torch.arange(context, device=self.context_lens.device)[None, :]  # [1, C]
            visible = key_pos < self.context_lens[:, None]  # [B, C]
            if window is not None:
                visible &= key_pos > (self.context_lens[:, None] - 1 - window)
            self.masks[window] = visible[:, None, None, :]
        return self.masks[window]

    def bias(self, window: int | None, context: int, dtype: torch.dtype) -> torch.Tensor:
        """The mask as SDPA's additive form: 0 where visible, -inf elsewhere. SDPA turns a bool
        mask into this on every call; built once, it is not rebuilt by every layer."""
        if (window, dtype) not in self.biases:
            visible = self.mask(window, context)
            zeros = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
            self.biases[window, dtype] = zeros.masked_fill_(~visible, float("-inf"))
        return self.biases[window, dtype]


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: block * block_size + offset of each new token
    prefills: tuple[PrefillSpan, ...]
    decode: DecodeGroup | None
    kernel: attention_cuda.KernelAttention | None = None  # set: the kernels' path (CUDA)


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [T, H, D]
    """Writes this step's keys/values into the cache and attends each row to its sequence."""
    if meta.kernel is not None:  # the paged kernels (CUDA): no gather, no mask
        return attention_cuda.paged_attention(
            q, k, v, k_cache, v_cache, meta.slot_mapping, meta.kernel, scale, sliding_window, soft_cap
        )
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if meta.decode is not None:
        kernel = _decode_kernel(q, k_cache)
        if kernel is not None:  # writes the decode rows of `out` in place
            group = meta.decode
            kernel.decode_attention(
                out, q, group.token_index, k_cache, v_cache, group.block_tables, group.context_lens, scale,
                -1 if sliding_window is None else sliding_window, 0.0 if soft_cap is None else soft_cap,
            )
        else:
            out.index_copy_(0, meta.decode.token_index, _decode(
                q, k_cache, v_cache, meta.decode, scale, sliding_window, soft_cap
            ))
    for span in meta.prefills:
        if span.start_pos == 0:  # nothing cached before this chunk: attend to its own keys/values
            rows = slice(span.token_start, span.token_end)
            out[rows] = _fresh_prefill(q[rows], k[rows], v[rows], scale, sliding_window, soft_cap)
        else:
            out[span.token_start : span.token_end] = _prefill(
                q, k_cache, v_cache, span, scale, sliding_window, soft_cap
            )
    return out


def _decode_kernel(q: torch.Tensor, k_cache: torch.Tensor) -> ModuleType | None:
    """The CPU decode attention kernel where it is built and takes these rows (fp32 on the CPU,
    an fp32 cache)."""
    if q.device.type != "cpu" or q.dtype != torch.float32 or k_cache.dtype != torch.float32:
        return None
    return native_cpu.attention_kernel()


def _gather(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    # [B, nb] -> [B, KVH, nb * block_size, D]
    # `index_select` copies each block as one contiguous run; `cache[block_tables]` (advanced
    # indexing) goes element by element and cost 7x more on a SmolLM2-sized decode step.
    b, nb = block_tables.shape
    _, bs, kvh, d = cache.shape
    gathered = cache.index_select(0, block_tables.reshape(-1))  # [B * nb, bs, KVH, D]
    return gathered.view(b, nb * bs, kvh, d).transpose(1, 2)


def _decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    group: DecodeGroup,
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:  # [B, H, D]
    rows, num_heads, head_dim = group.token_index.shape[0], q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    # Query head h reads KV head h // (H / KVH): a KV head's query heads are consecutive, so they
    # become its rows, [B, KVH, H / KVH, D].
    query = q.index_select(0, group.token_index).view(rows, num_kv_heads, -1, head_dim)
    keys = _gather(k_cache, group.block_tables)  # [B, KVH, C, D]
    values = _gather(v_cache, group.block_tables)
    context = keys.shape[2]
    if soft_cap is None:
        mask = group.bias(sliding_window, context, query.dtype)
    else:
        mask = group.mask(sliding_window, context)
    out = _attend(query, keys, values, mask, scale, soft_cap)
    return out.reshape(rows, num_heads, head_dim)


def _fresh_prefill(
    q: torch.Tensor,  # [n, H, D]
    k: torch.Tensor,  # [n, KVH, D]
    v: torch.Tensor,  # [n, KVH, D]
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:  # [n, H, D]
    n = q.shape[0]
    mask = None
    if (sliding_window is not None and sliding_window < n) or soft_cap is not None:
        pos = torch.arange(n, device=q.device)
        mask = pos[None, :] <= pos[:, None]
        if sliding_window is not None:
            mask &= pos[None, :] > pos[:, None] - sliding_window
    query, keys, values = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = _attend(query, keys, values, mask, scale, soft_cap)
    return out.squeeze(0).transpose(0, 1)


def _prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    span: PrefillSpan,
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:  # [n, H, D]
    n = span.token_end - span.token_start
    context = span.start_pos + n
    query = q[span.token_start : span.token_end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
    keys = _gather(k_cache, span.block_table[None])[:, :, :context]  # [1, KVH, ctx, D]
    values = _gather(v_cache, span.block_table[None])[:, :, :context]
    q_pos = torch.arange(span.start_pos, context, device=q.device)[:, None]  # [n, 1]
    key_pos = torch.arange(context, device=q.device)[None, :]  # [1, ctx]
    mask = key_pos <= q_pos
    if sliding_window is not None:
        mask &= key_pos > q_pos - sliding_window
    out = _attend(query, keys, values, mask, scale, soft_cap)
    return out.squeeze(0).transpose(0, 1)


def _attend(
    query: torch.Tensor,  # [B, H, n, D]
    keys: torch.Tensor,  # [B, KVH, ctx, D]
    values: torch.Tensor,  # [B, KVH, ctx, D]
    mask: torch.Tensor | None,  # broadcastable to [B, H, n, ctx]: bool, or additive without
    # soft_cap; None = causal
    scale: float,
    soft_cap: float | None,
) -> torch.Tensor:  # [B, H, n, D]
    if soft_cap is None:
        return F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
        )
    assert mask is not None  # callers build an explicit mask when capping
    groups = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale  # [B, H, n, ctx]
    scores = torch.tanh(scores / soft_cap) * soft_cap
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, values)
