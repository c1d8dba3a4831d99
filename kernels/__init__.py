"""Batched multi-LoRA kernels: every token of a batch may use a different adapter.

One step of the engine::

    meta = prepare_lora_batch(token_lora, num_slots=L)          # once per step, all layers
    add_lora(out, x, lora_a, lora_b, token_lora, scales, meta=meta)          # o_proj, down_proj
    add_lora_sliced(qkv, x, qkv_a, qkv_b, token_lora, qkv_scales,             # q/k/v in one go
                    slice_widths=(q_width, kv_width, kv_width), meta=meta)

`add_lora(out, x, lora_a, lora_b, token_lora, scales)` adds, in place,
`scales[l] * (x[t] @ lora_a[l].T) @ lora_b[l].T` into `out[t]` for each token `t` whose slot
`l = token_lora[t]` is not -1, and returns `out`. Shapes: x [T, K]; out [T, N] (any strides, so
a column view of a fused output works); lora_a [L, R, K]; lora_b [L, N, R]; token_lora [T] int
in any order; scales [L] float32. x, out, lora_a and lora_b share one dtype (fp32, fp16, bf16).
Smaller ranks are zero-padded to R. The delta is computed in fp32 and added with one rounding.

`add_lora_sliced` is the fused form for projections that share x (q/k/v, gate/up): one shrink
launch reads x once for every slice, one expand launch writes every slice. lora_a is
[L, S, R, K] (slice s of slot l: `lora_a[l, s, :r]`); lora_b is [L, N, R] with slice s on rows
`sum(widths[:s]) : sum(widths[:s+1])` — the same rows as in `out`; scales is [L] or [S, L]
(per-slice scales for PEFT `alpha_pattern`/`rank_pattern`). Widths may differ (GQA).

`prepare_lora_batch(token_lora, num_slots)` returns a frozen `LoraBatch`: tokens grouped by slot
and cut into tiles, built on the device with one host sync (the slot range check; pass
`validate=False` to skip it inside CUDA graph capture). Passing `meta=` skips that work in every
layer. Without `meta`, each call prepares its own.

Dispatch: CUDA tensors use the Triton kernels (`lorafleet.kernels.lora`); CPU tensors use the
torch path (`torch_lora`: grouped per adapter, or gathered per token when there are many adapters
with few tokens each, chosen per call by `torch_lora.choose_path`). `LORAFLEET_KERNELS=triton`
forces Triton (with `TRITON_INTERPRET=1` it runs on the CPU); `LORAFLEET_KERNELS=torch` forces
torch. Bad input raises `LoraKernelError` (a `ValueError`) naming the shapes, before anything is launched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
from lorafleet.kernels import torch_lora
from lorafleet.kernels.batch import LoraBatch, prepare_lora_batch
from lorafleet.kernels.errors import LoraKernelError
from lorafleet.kernels.validation import check_meta, check_sliced_inputs

BACKENDS = ("auto", "triton", "torch")


def select_backend(device: torch.device) -> str:
    """'triton' or 'torch' for tensors on `device`, honouring LORAFLEET_KERNELS."""
    choice = os.environ.get("LORAFLEET_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise LoraKernelError(f"LORAFLEET_KERNELS must be one of {BACKENDS}, got {choice!r}")
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return "torch"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise LoraKernelError(
            f"LORAFLEET_KERNELS=triton on {device} tensors needs TRITON_INTERPRET=1 (set before triton "
            "is first imported) to run the Triton kernels in the CPU interpreter"
        )
    return "triton"


def add_lora(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] float32
    *,
    meta: LoraBatch | None = None,
) -> torch.Tensor:
    """Adds each token's LoRA delta into `out` in place and returns `out`.

    Args:
        out: [T, N] the base layer's output (x's dtype); may be a column view.
        x: [T, K] activations, fp32, fp16 or bf16.
        lora_a: [L, R, K] stacked A of L adapter slots, ranks zero-padded to R.
        lora_b: [L, N, R] stacked B, zero-padded likewise.
        token_lora: [T] integer slot of each token; -1 leaves that row of `out` untouched.
        scales: [L] float32, alpha/r (alpha/sqrt(r) for rsLoRA) per slot.
        meta: this step's `prepare_lora_batch(token_lora, L)`; built here when omitted.

    Raises:
        LoraKernelError (a ValueError): mismatched shapes, dtypes or devices, a slot out of range.

    Example:
        >>> out = add_lora(out, x, lora_a, lora_b, torch.tensor([0, -1, 1]), torch.ones(2))
    """
    if lora_a.dim() != 3 or lora_b.dim() != 3:
        raise LoraKernelError(
            f"add_lora expects lora_a [L, R, K] and lora_b [L, N, R]; got lora_a {tuple(lora_a.shape)}, "
            f"lora_b {tuple(lora_b.shape)} (use add_lora_sliced for [L, S, R, K])"
        )
    if out.dim() != 2:
        raise LoraKernelError(f"out must be [T, N], got {tuple(out.shape)}")
    return add_lora_sliced(
        out, x, lora_a.unsqueeze(1), lora_b, token_lora, scales, slice_widths=(out.shape[1],), meta=meta
    )


def add_lora_sliced(
    out: torch.Tensor,  # [T, N], N = sum(slice_widths)
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [L] or [S, L] float32
    *,
    slice_widths: Sequence[int],  # S output widths, e.g. (q, k, v) or (gate, up)
    meta: LoraBatch | None = None,
) -> torch.Tensor:
    """Fused LoRA for S projections that share x, in one shrink and one expand launch.

    Slice s adds `scales[s, l] * (x[t] @ lora_a[l, s].T) @ lora_b[l, o_s:o_s + w_s].T` into
    `out[t, o_s:o_s + w_s]`, where w_s = slice_widths[s] and o_s = sum(slice_widths[:s]).
    Adapters that skip a slice keep zeros there. Other arguments as in `add_lora`.

    Example:
        >>> qkv = add_lora_sliced(qkv, x, qkv_a, qkv_b, token_lora, scales,
        ...                       slice_widths=(4096, 1024, 1024), meta=meta)
    """
    widths = tuple(int(w) for w in slice_widths)
    scales_2d = check_sliced_inputs(out, x, lora_a, lora_b, token_lora, scales, widths)  # [S, L]
    num_slots = lora_a.shape[0]
    if meta is None:
        meta = prepare_lora_batch(token_lora, num_slots)
    else:
        check_meta(meta, token_lora, num_slots)
    if meta.num_tokens == 0 or not meta.has_lora_tokens:
        return out  # nothing to add: launch nothing
    if select_backend(x.device) == "torch":
        offsets = [0]
        for width in widths:
            offsets.append(offsets[-1] + width)
        return torch_lora.add_lora_sliced(out, x, lora_a, lora_b, token_lora, scales_2d, offsets, meta)
    from lorafleet.kernels import lora  # imported late: TRITON_INTERPRET is read at decoration

    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        return lora.add_lora_sliced(out, x, lora_a, lora_b, scales_2d, widths, meta)


__all__ = [
    "LoraBatch",
    "LoraKernelError",
    "add_lora",
    "add_lora_sliced",
    "prepare_lora_batch",
    "select_backend",
]

# Paged attention over the KV cache (kernels/paged_attention.py); imported last: it reuses
# select_backend above.
from lorafleet.kernels.paged_attention import (  # noqa: E402
    AttentionKernelError,
    paged_decode_attention,
    paged_prefill_attention,
)

__all__ += ["AttentionKernelError", "paged_decode_attention", "paged_prefill_attention"]
