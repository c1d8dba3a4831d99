"""Paged attention over the KV cache: the public entry points, their checks and the dispatch.

The cache of one layer is k_cache / v_cache [num_blocks, block_size, KVH, D]; token p of a
sequence lives in block `block_table[p // block_size]` at offset `p % block_size`, and this step's
keys/values are already written there.

    out = paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale=D ** -0.5)
    #   q [B, H, D]: one query per sequence, at position context_lens[b] - 1
    out = paged_prefill_attention(q, k_cache, v_cache, cu_seqlens_q=cu, start_pos=start,
                                  block_tables=tables, scale=D ** -0.5)
    #   q [T, H, D]: S chunks packed; query j of chunk s at position start_pos[s] + j (causal)

Both take `sliding_window` (Mistral: key p is visible to a query at t iff t - window < p <= t),
`soft_cap` (Gemma-2: scores = cap * tanh(scores / cap) before the softmax) and `out` (written
in place and returned). GQA: H must be a multiple of KVH. fp32, fp16, bf16; head_dim a multiple
of 8 up to 256. A context of 0 tokens gives zeros (padded rows of a CUDA-graph batch).

Dispatch as for the LoRA kernels (`backend_for`): CUDA tensors run the Triton kernels, others
the torch path (`torch_attention`); LORAFLEET_KERNELS forces either. The checks here look at
shapes, dtypes and devices only (no host sync); values are the caller's invariants: context_lens
<= max_blocks * block_size (longer ones are clamped), block ids < num_blocks wherever a visible
key lives, cu_seqlens_q non-decreasing from 0 to T.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from lorafleet.kernels import torch_attention
from lorafleet.kernels.backend import backend_for
from lorafleet.kernels.errors import LoraKernelError

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
MAX_HEAD_DIM = 256


class AttentionKernelError(LoraKernelError):
    """Shapes, dtypes, devices or options the attention kernels cannot accept (a ValueError)."""


def _describe(**tensors: torch.Tensor | None) -> str:
    return ", ".join(f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"
                     for name, t in tensors.items() if t is not None)


Fail = Callable[[str], "AttentionKernelError"]


def _check_common(
    fail: Fail, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor | None,
    scale: float, sliding_window: int | None, soft_cap: float | None,
) -> None:
    if q.dim() != 3 or k_cache.dim() != 4:
        raise fail("q must be 3-D [tokens, H, D] and k_cache 4-D [num_blocks, block_size, KVH, D]")
    if v_cache.shape != k_cache.shape:
        raise fail("v_cache must have k_cache's shape")
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, num_kv_heads, cache_dim = k_cache.shape
    if cache_dim != head_dim:
        raise fail("q's head_dim must equal the cache's D")
    if num_kv_heads == 0 or block_size == 0 or num_heads == 0 or num_heads % num_kv_heads:
        raise fail("H must be a positive multiple of KVH, and block_size positive")
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise fail(f"head_dim must be a multiple of 8 from 8 to {MAX_HEAD_DIM}")
    if q.dtype not in SUPPORTED_DTYPES or not q.dtype == k_cache.dtype == v_cache.dtype:
        raise fail(f"q, k_cache and v_cache must share one dtype of {[str(d) for d in SUPPORTED_DTYPES]}")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype):
        raise fail("out must have q's shape and dtype")
    if any(t.stride(-1) != 1 for t in (q, k_cache, v_cache, *(() if out is None else (out,)))):
        raise fail("q, k_cache, v_cache and out must be contiguous in their last dim (head_dim)")
    if not _is_positive_number(scale):
        raise fail(f"scale must be a finite positive number, got {scale!r}")
    if sliding_window is not None and (isinstance(sliding_window, bool) or not isinstance(sliding_window, int)
                                       or sliding_window < 1):
        raise fail(f"sliding_window must be None or an int >= 1, got {sliding_window!r}")
    if soft_cap is not None and not _is_positive_number(soft_cap):
        raise fail(f"soft_cap must be None or a finite positive number, got {soft_cap!r}")


def _is_positive_number(value: object) -> bool:
    """A finite number > 0 (not a bool, not a string or tensor)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def _check_index(fail: Fail, name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tensor.dtype not in INDEX_DTYPES:
        raise fail(f"{name} must be int32 or int64")
    if tuple(tensor.shape) != shape:
        raise fail(f"{name} must have shape {shape}")


def _check_devices(fail: Fail, *tensors: torch.Tensor | None) -> None:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise fail(f"all tensors must be on one device, found {sorted(str(d) for d in devices)}")


def _on_device(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Launch on the tensors' own GPU (not the current one): Triton launches on the current device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def paged_decode_attention(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32/int64
    context_lens: torch.Tensor,  # [B] int32/int64, tokens cached (the query's own key included)
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    out: torch.Tensor | None = None,  # [B, H, D]
) -> torch.Tensor:  # [B, H, D]
    """One query token per sequence attending to its first context_lens[b] cached tokens.

    Raises:
        AttentionKernelError (a ValueError): shapes, dtypes, devices or options, before any launch.

    Example:
        >>> out = paged_decode_attention(q, k_cache, v_cache, tables, lens, scale=128 ** -0.5)
    """
    def fail(problem: str) -> AttentionKernelError:  # the shapes are only formatted on failure
        given = _describe(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                          context_lens=context_lens, out=out)
        return AttentionKernelError(f"paged_decode_attention: {problem}; got {given}")

    _check_common(fail, q, k_cache, v_cache, out, scale, sliding_window, soft_cap)
    if block_tables.dim() != 2:
        raise fail("block_tables must be [B, max_blocks]")
    _check_index(fail, "block_tables", block_tables, (q.shape[0], block_tables.shape[1]))
    _check_index(fail, "context_lens", context_lens, (q.shape[0],))
    _check_devices(fail, q, k_cache, v_cache, block_tables, context_lens, out)
    out = torch.empty_like(q) if out is None else out
    options = {"scale": float(scale), "sliding_window": sliding_window,
               "soft_cap": None if soft_cap is None else float(soft_cap)}
    if backend_for(q.device).name == "torch":
        return torch_attention.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, out,
                                                      **options)
    from lorafleet.kernels import attention  # imported late: TRITON_INTERPRET is read at decoration

    with _on_device(q.device):
        return attention.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, out,
                                                **options)


def paged_prefill_attention(
    q: torch.Tensor,  # [T, H, D], S chunks packed
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor,  # [S + 1] int32/int64: chunk s is rows cu[s]:cu[s+1]
    start_pos: torch.Tensor,  # [S] int32/int64: tokens cached before each chunk
    block_tables: torch.Tensor,  # [S, max_blocks] int32/int64
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    out: torch.Tensor | None = None,  # [T, H, D]
) -> torch.Tensor:  # [T, H, D]
    """Causal varlen prefill of S chunks whose keys/values (and the earlier ones) are cached.

    Raises:
        AttentionKernelError (a ValueError): shapes, dtypes, devices or options, before any launch.

    Example:
        >>> out = paged_prefill_attention(q, k_cache, v_cache, cu_seqlens_q=cu, start_pos=start,
        ...                               block_tables=tables, scale=128 ** -0.5, sliding_window=4096)
    """
    def fail(problem: str) -> AttentionKernelError:
        given = _describe(q=q, k_cache=k_cache, v_cache=v_cache, cu_seqlens_q=cu_seqlens_q,
                          start_pos=start_pos, block_tables=block_tables, out=out)
        return AttentionKernelError(f"paged_prefill_attention: {problem}; got {given}")

    _check_common(fail, q, k_cache, v_cache, out, scale, sliding_window, soft_cap)
    if start_pos.dim() != 1 or block_tables.dim() != 2:
        raise fail("start_pos must be [S] and block_tables [S, max_blocks]")
    num_seqs = start_pos.shape[0]
    _check_index(fail, "cu_seqlens_q", cu_seqlens_q, (num_seqs + 1,))
    _check_index(fail, "start_pos", start_pos, (num_seqs,))
    _check_index(fail, "block_tables", block_tables, (num_seqs, block_tables.shape[1]))
    _check_devices(fail, q, k_cache, v_cache, cu_seqlens_q, start_pos, block_tables, out)
    out = torch.empty_like(q) if out is None else out
    options = {"cu_seqlens_q": cu_seqlens_q, "start_pos": start_pos, "block_tables": block_tables,
               "scale": float(scale), "sliding_window": sliding_window,
               "soft_cap": None if soft_cap is None else float(soft_cap)}
    if backend_for(q.device).name == "torch":
        return torch_attention.paged_prefill_attention(q, k_cache, v_cache, out, **options)
    from lorafleet.kernels import attention_prefill

    with _on_device(q.device):
        return attention_prefill.paged_prefill_attention(q, k_cache, v_cache, out, **options)
