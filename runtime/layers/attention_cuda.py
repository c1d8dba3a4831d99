"""Attention through the paged kernels of `lorafleet.kernels`: the runtime's CUDA path.

The KV cache is read in place (no gathered copy, no dense mask): decode rows through
`paged_decode_attention` (split-K for long contexts), prefill chunks through the varlen
`paged_prefill_attention`; GQA, each layer's sliding window and Gemma-2 soft-capping are kernel
arguments. The model runner builds `KernelAttention` once per step (int32 block tables, context
lengths, cu_seqlens, and the launch configs chosen from shapes only), so every layer's call is
two cache writes and at most two kernel launches, with no check, no host sync and no allocation
besides its output.

Rows are ordered decode first: rows [0, B) add one token each, rows [B, T) are the prefill chunks
packed in order, so both kernels take plain slices of q and out.

On CUDA the launchers are Triton's; elsewhere (tests on a CPU, `LORAFLEET_KERNELS=torch`) the
same calls go to the kernels' torch path, which is how the CPU suite runs this code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lorafleet.kernels import attention_config, torch_attention
from lorafleet.kernels.backend import backend_for


@dataclass(frozen=True)
class AttentionKernels:
    """The decode and prefill launchers for one device, resolved once; they check nothing."""

    name: str  # "triton" | "torch"
    decode: Callable[..., torch.Tensor]
    prefill: Callable[..., torch.Tensor]


@functools.lru_cache(maxsize=8)
def kernels_for(device: torch.device) -> AttentionKernels:
    if backend_for(device).name == "triton":
        from lorafleet.kernels import attention, attention_prefill  # late: TRITON_INTERPRET

        return AttentionKernels("triton", attention.paged_decode_attention,
                                attention_prefill.paged_prefill_attention)

    def decode(*args: Any, config: Any = None, **options: Any) -> torch.Tensor:
        return torch_attention.paged_decode_attention(*args, **options)

    def prefill(*args: Any, config: Any = None, **options: Any) -> torch.Tensor:
        return torch_attention.paged_prefill_attention(*args, **options)

    return AttentionKernels("torch", decode, prefill)


@dataclass(frozen=True)
class PrefillChunks:
    """The step's prefill chunks, packed after the decode rows."""

    cu_seqlens: torch.Tensor  # [S + 1] int32, from 0: chunk s is prefill rows cu[s]:cu[s+1]
    start_pos: torch.Tensor  # [S] int32: tokens cached before each chunk
    block_tables: torch.Tensor  # [S, W] int32
    config: attention_config.PrefillConfig | None  # None on the torch path


@dataclass(frozen=True)
class KernelAttention:
    """One step's attention metadata for the kernels; see the module docstring for the row order."""

    kernels: AttentionKernels
    num_decodes: int  # B
    block_tables: torch.Tensor  # [B, W] int32: entries past a context may hold anything
    context_lens: torch.Tensor  # [B] int32, the new token included; 0 for a padded row
    decode_config: attention_config.DecodeConfig | None  # None on the torch path
    prefill: PrefillChunks | None


@dataclass(frozen=True)
class AttentionShape:
    """What the launch configs depend on besides the batch: the model's heads and the KV dtype."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype
    device: torch.device


    @property
    def dot_element_size(self) -> int:
        # fp32 inputs, and the interpreter, convert the tiles to fp32 before tl.dot
        return attention_config.dot_element_size(
            self.dtype, self.dtype == torch.float32 or self.device.type != "cuda")


@functools.lru_cache(maxsize=1024)
def decode_config(shape: AttentionShape, batch: int, width: int) -> attention_config.DecodeConfig:
    """The decode launch for `batch` rows and block tables `width` wide (shapes only, so one per
    CUDA-graph bucket and one per eager table width)."""
    return attention_config.decode_config(
        batch=batch, num_kv_heads=shape.num_kv_heads, group=shape.num_heads // shape.num_kv_heads,
        head_dim=shape.head_dim, max_context=width * shape.block_size, elem=shape.dot_element_size,
        limits=attention_config.device_limits(shape.device),
    )


@functools.lru_cache(maxsize=64)
def prefill_config(shape: AttentionShape) -> attention_config.PrefillConfig:
    return attention_config.prefill_config(
        group=shape.num_heads // shape.num_kv_heads, head_dim=shape.head_dim, elem=shape.dot_element_size,
        limits=attention_config.device_limits(shape.device),
    )


def paged_attention(
    q: torch.Tensor,  # [T, H, D], decode rows first
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    slot_mapping: torch.Tensor,  # [T] int64
    meta: KernelAttention,
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:  # [T, H, D]
    """Writes this step's keys/values at their slots, then attends each row in place."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    options = {"scale": scale, "sliding_window": sliding_window, "soft_cap": soft_cap}
    b = meta.num_decodes
    if b:
        meta.kernels.decode(q[:b], k_cache, v_cache, meta.block_tables, meta.context_lens, out[:b],
                            config=meta.decode_config, **options)
    chunks = meta.prefill
    if chunks is not None:
        meta.kernels.prefill(q[b:], k_cache, v_cache, out[b:], cu_seqlens_q=chunks.cu_seqlens,
                             start_pos=chunks.start_pos, block_tables=chunks.block_tables,
                             config=chunks.config, **options)
    return out
