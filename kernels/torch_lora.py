"""Multi-LoRA in torch (the CPU path, and the fallback without Triton), in two forms.

**Grouped**: one matmul pair per adapter present in the batch, on that adapter's rows. Reads
each adapter's weights once, but pays a fixed per-call cost (about 4 + 3·S small ops) per
adapter, so a decode batch of 32 tokens on 32 adapters pays it 32 times.

**Gathered**: each active token gathers its own adapter's A and B (`index_select`) and one
batched matmul-vector (`bmm`) per slice does every token at once: a constant number of ops
whatever the number of adapters, but it copies the weights once per token (T copies, not D).

`choose_path` picks between them per call from the active token count T and the distinct
adapter count D (both counted by `prepare_lora_batch` at its one host sync, so no sync per
layer) and E = S·R·K + N·R, the weight elements one token gathers (from the shapes, free):

    gathered  iff  D >= 2  and  T <= GATHER_MAX_TOKENS_PER_SLOT * D  and  E <= GATHER_MAX_ELEMENTS
    grouped   otherwise (one adapter; several tokens per adapter, e.g. prefill; large weights)

The bound on E exists because on a CPU copying one token's weights (~0.5 ns an element) costs as
much as the grouped form's fixed per-adapter cost (~30-90 µs) once E nears 10^5: 7B-size q|k|v
at rank 16 (E = 3·10^5) loses at any T, the demo model's (E = 10^4) wins up to 7x
(docs/kernels.md, "CPU path", has the measurements). Memory stays bounded for any T: the
gathered form works in chunks of at most GATHER_CHUNK_ELEMENTS copied elements.

Both forms compute the delta in float32 and add it into `out` with one rounding, on the active
rows only: rows with slot -1 are never read into the sum nor written, so they stay
bit-identical in every dtype (adding a zero delta and rounding would turn -0.0 into +0.0).
"""

from __future__ import annotations

import torch
from lorafleet.kernels.batch import LoraBatch

GROUPED = "grouped"
GATHERED = "gathered"
PATHS = (GROUPED, GATHERED)
# Measured on one CPU thread (benchmarks/kernels.py --cpu-paths): at the demo model's shapes the
# gathered form wins up to 4-8 tokens per adapter, and loses at 7B shapes whatever T is.
GATHER_MAX_TOKENS_PER_SLOT = 4
GATHER_MAX_ELEMENTS = 1 << 16  # E: between 10^4 (wins 2-7x) and 3·10^5 (loses 2-6x)
# Bound on the gathered weight copies of one chunk of tokens (fp32 elements, 16 MiB): larger
# batches are cut into chunks of tokens so memory stays flat whatever T, R and K are.
GATHER_CHUNK_ELEMENTS = 1 << 22


def choose_path(num_active_tokens: int, num_active_slots: int, elements_per_token: int) -> str:
    """'gathered' for many adapters with few tokens each and small weights (decode), else 'grouped'.

    Args:
        num_active_tokens: T, tokens of the batch that use an adapter.
        num_active_slots: D, distinct adapter slots among them.
        elements_per_token: E = S·R·K + N·R, the A and B elements the gathered form copies per token.

    Returns:
        `GATHERED` iff D >= 2, T <= GATHER_MAX_TOKENS_PER_SLOT * D and E <= GATHER_MAX_ELEMENTS,
        else `GROUPED`.

    Example:
        >>> choose_path(32, 32, 10240), choose_path(300, 3, 10240), choose_path(4, 1, 10240)
        ('gathered', 'grouped', 'grouped')
    """
    if num_active_slots < 2 or num_active_tokens > GATHER_MAX_TOKENS_PER_SLOT * num_active_slots:
        return GROUPED
    return GATHERED if elements_per_token <= GATHER_MAX_ELEMENTS else GROUPED


def elements_per_token(lora_a: torch.Tensor, lora_b: torch.Tensor) -> int:
    """E = S·R·K + N·R: weight elements the gathered form copies for one token."""
    _, num_slices, rank, hidden_in = lora_a.shape
    return num_slices * rank * hidden_in + lora_b.shape[1] * rank


def add_lora_sliced(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: list[int],  # S + 1 column offsets into N
    meta: LoraBatch,
    *,
    path: str | None = None,  # GROUPED / GATHERED; None = `choose_path`
) -> torch.Tensor:
    """Adds each active token's `scale_s * (x @ A_s.T) @ B_s.T` into each slice of `out`, in place.

    Inputs are already validated by `lorafleet.kernels.add_lora_sliced`; `meta` belongs to
    `token_lora`. `path` forces one form (tests, benchmarks); both give the same result up to
    the fp32 summation order.
    """
    counts = meta.slot_counts  # [L]
    num_active = meta.num_active_tokens
    num_present = meta.num_active_slots
    if num_active is None or num_present is None:  # built with validate=False: count here
        num_active, num_present = torch.stack([counts.sum(), (counts > 0).sum()]).tolist()
    if num_active == 0:
        return out
    chosen = path or choose_path(num_active, num_present, elements_per_token(lora_a, lora_b))
    if chosen == GATHERED:
        return _gathered(out, x, lora_a, lora_b, token_lora, scales, slice_offsets, meta, num_active)
    if chosen == GROUPED:
        return _grouped(out, x, lora_a, lora_b, scales, slice_offsets, meta)
    raise ValueError(f"path must be one of {PATHS} or None, got {path!r}")


def _grouped(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: list[int],
    meta: LoraBatch,
) -> torch.Tensor:
    """One shrink matmul for all slices and one expand matmul per slice, per adapter present."""
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


def _gathered(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: list[int],
    meta: LoraBatch,
    num_active: int,
) -> torch.Tensor:
    """Per-token gathered weights and bmm, over chunks of the active rows."""
    chunk = max(1, GATHER_CHUNK_ELEMENTS // elements_per_token(lora_a, lora_b))  # forced on big shapes
    all_active = num_active == meta.num_tokens
    # All rows active (the usual decode step): work on row ranges, no index on x or out.
    rows = None if all_active else meta.sorted_tokens[:num_active].long()  # [n], slot -1 rows excluded
    for begin in range(0, num_active, chunk):
        end = min(begin + chunk, num_active)
        if rows is None:
            slots = token_lora[begin:end].long()  # [n]
            delta = _gathered_delta(x[begin:end], lora_a, lora_b, slots, scales, slice_offsets)
            _add_range(out[begin:end], delta)
        else:
            chunk_rows = rows[begin:end]
            slots = token_lora[chunk_rows].long()
            delta = _gathered_delta(x[chunk_rows], lora_a, lora_b, slots, scales, slice_offsets)
            _add_rows(out, chunk_rows, delta)
    return out


def _gathered_delta(
    x: torch.Tensor,  # [n, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    slots: torch.Tensor,  # [n] int64, all >= 0
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: list[int],
) -> torch.Tensor:  # [n, N] float32
    """The fp32 delta of n tokens, each with its own adapter's A and B gathered."""
    n = slots.numel()
    _, num_slices, rank, hidden_in = lora_a.shape
    a = lora_a.index_select(0, slots).float().view(n, num_slices * rank, hidden_in)  # [n, S*R, K]
    shrunk = torch.bmm(a, x.float().unsqueeze(-1)).view(n, num_slices, rank)  # [n, S, R]
    shrunk = shrunk * scales.index_select(1, slots).T.unsqueeze(-1)  # scale the small side
    b = lora_b.index_select(0, slots).float()  # [n, N, R]
    if num_slices == 1:
        return torch.bmm(b, shrunk.view(n, rank, 1)).view(n, -1)
    parts = [
        torch.bmm(b[:, slice_offsets[s] : slice_offsets[s + 1]], shrunk[:, s].unsqueeze(-1)).squeeze(-1)
        for s in range(num_slices)
    ]  # S x [n, N_s]
    return torch.cat(parts, dim=1)


def _add_range(out: torch.Tensor, delta: torch.Tensor) -> None:
    """out += delta (fp32) with one rounding; out may be a strided view."""
    if out.dtype == torch.float32:
        out.add_(delta)
    else:
        out.copy_(delta.add_(out))


def _add_rows(out: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> None:
    """out[rows] += delta with one rounding; few temporaries (large CPU allocations page-fault)."""
    if out.dtype == torch.float32:
        out.index_add_(0, rows, delta)
    else:
        out.index_copy_(0, rows, delta.add_(out.index_select(0, rows)).to(out.dtype))
