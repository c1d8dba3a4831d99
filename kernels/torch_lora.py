"""Multi-LoRA in torch (the CPU path, and the fallback without Triton), in two forms.

**Grouped**: one matmul pair per adapter present in the batch, on that adapter's rows. Reads
each adapter's weights once, but pays a fixed per-call cost (about 4 + 3·S small ops) per
adapter, so a decode batch of 32 tokens on 32 adapters pays it 32 times.

**Gathered**: every active token uses its own adapter's A and B, in a constant number of ops
whatever the number of adapters. Two implementations, by the weights' memory layout:

- *in place* (fp32 weights in the row layout, `is_row_layout`: A stored [L, K, S, R], B
  [L, R, N], as the engine's CPU layers keep them): `embedding_bag` sums, per token, the K rows
  of its A^T weighted by x (shrink) and the R rows of its B^T weighted by the scaled shrink
  (expand). A fused gather and weighted sum: no weight is copied; about 6 ops per call.
- *copied* (any other layout or dtype): `index_select` copies each token's A and B, then one
  batched matrix-vector product (`bmm`) per slice: T weight copies, about 12 ops.

`choose_path` picks per call from the active token count T and the distinct adapter count D
(both counted by `prepare_lora_batch` at its one host sync, so no sync per layer), E = S·R·K +
N·R, the weight elements one token reads (from the shapes, free), and the implementation:

    in place:  gathered iff  T <= max(16·D, 256)  when E <= 2^16,   T <= 2·D  otherwise
    copied:    gathered iff  D >= 2  and  T <= 4·D  and  E <= 2^16
    grouped otherwise (several tokens per adapter, e.g. prefill; large weights)

Measured on one thread (docs/kernels.md, "CPU path"): at the demo model's shapes (E = 10^4)
the in-place form beats grouped up to 32 tokens per adapter (3-5x at one per adapter, and even
for one adapter up to a few hundred tokens, where grouped's per-op costs dominate); at 7B
shapes (E = 3·10^5) it wins 1.5x at one token per adapter and loses from 4. The copied form
pays ~0.5 ns an element copied, hence its tighter bound. Memory stays bounded for any T: the
gathered form works in chunks of at most GATHER_CHUNK_ELEMENTS weight elements.

Both forms compute the delta in float32 and add it into `out` with one rounding, on the active
rows only: rows with slot -1 are never read into the sum nor written, so they stay
bit-identical in every dtype (adding a zero delta and rounding would turn -0.0 into +0.0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lorafleet.kernels.batch import LoraBatch

GROUPED = "grouped"
GATHERED = "gathered"
PATHS = (GROUPED, GATHERED)
# Measured on one CPU thread (benchmarks/kernels.py --cpu-paths, docs/kernels.md).
GATHER_MAX_ELEMENTS = 1 << 16  # E: "small" weights (10^4: gathering wins widely; 3·10^5: narrowly)
GATHER_MAX_TOKENS_PER_SLOT = 4  # copied form, small E
IN_PLACE_MAX_TOKENS_PER_SLOT = 16  # in-place form, small E
IN_PLACE_MIN_TOKENS = 256  # in-place form, small E: wins up to here even on one adapter
IN_PLACE_LARGE_MAX_TOKENS_PER_SLOT = 2  # in-place form, large E
# Bound on the weight elements one chunk of tokens reads (copies, for the copied form: fp32,
# 16 MiB): larger batches are cut into chunks of tokens so memory stays flat whatever T, R, K.
GATHER_CHUNK_ELEMENTS = 1 << 22


def choose_path(
    num_active_tokens: int, num_active_slots: int, elements_per_token: int, *, in_place: bool = False
) -> str:
    """'gathered' for many adapters with few tokens each (decode), else 'grouped'.

    Args:
        num_active_tokens: T, tokens of the batch that use an adapter.
        num_active_slots: D, distinct adapter slots among them.
        elements_per_token: E = S·R·K + N·R, the A and B elements the gathered form reads per token.
        in_place: the gathered form would read the weights in place (`is_row_layout`, fp32)
            rather than copy them per token.

    Returns:
        `GATHERED` or `GROUPED` by the rule in this module's docstring.

    Example:
        >>> choose_path(32, 32, 10240), choose_path(300, 3, 10240), choose_path(4, 1, 10240)
        ('gathered', 'grouped', 'grouped')
        >>> choose_path(32, 1, 10240, in_place=True), choose_path(64, 32, 294912, in_place=True)
        ('gathered', 'gathered')
    """
    tokens, slots, small = num_active_tokens, num_active_slots, elements_per_token <= GATHER_MAX_ELEMENTS
    if in_place:
        if small:
            limit = max(IN_PLACE_MAX_TOKENS_PER_SLOT * slots, IN_PLACE_MIN_TOKENS)
        else:
            limit = IN_PLACE_LARGE_MAX_TOKENS_PER_SLOT * slots
        return GATHERED if tokens <= limit else GROUPED
    if slots < 2 or tokens > GATHER_MAX_TOKENS_PER_SLOT * slots:
        return GROUPED
    return GATHERED if small else GROUPED


def elements_per_token(lora_a: torch.Tensor, lora_b: torch.Tensor) -> int:
    """E = S·R·K + N·R: weight elements the gathered form copies for one token."""
    _, num_slices, rank, hidden_in = lora_a.shape
    return num_slices * rank * hidden_in + lora_b.shape[1] * rank


def apply(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    scales: torch.Tensor,  # [S, L] float32
    slice_widths: tuple[int, ...],  # S widths summing to N
    meta: LoraBatch,
    *,
    path: str | None = None,  # GROUPED / GATHERED; None = `choose_path`
) -> torch.Tensor:
    """Adds each active token's `scale_s * (x @ A_s.T) @ B_s.T` into each slice of `out`, in place.

    The torch backend's entry (`lorafleet.kernels.backend_for` a CPU device): inputs are trusted,
    checked once by the public `lorafleet.kernels.add_lora_sliced` or consistent by construction
    (the engine's own buffers); `meta` is `prepare_lora_batch` of this batch. `path` forces one
    form (tests, benchmarks); both give the same result up to the fp32 summation order.
    """
    counts = meta.slot_counts  # [L]
    num_active = meta.num_active_tokens
    num_present = meta.num_active_slots
    if num_active is None or num_present is None:  # built with validate=False: count here
        num_active, num_present = torch.stack([counts.sum(), (counts > 0).sum()]).tolist()
    if num_active == 0:
        return out
    offsets = offsets_of(slice_widths)
    in_place = reads_in_place(x, lora_a, lora_b)
    elements = elements_per_token(lora_a, lora_b)
    chosen = path or choose_path(num_active, num_present, elements, in_place=in_place)
    if chosen == GATHERED:
        assert meta.token_lora is not None  # set by prepare_lora_batch
        args = (meta.token_lora, scales, offsets, meta, num_active, in_place)
        return _gathered(out, x, lora_a, lora_b, *args)
    if chosen == GROUPED:
        return _grouped(out, x, lora_a, lora_b, scales, offsets, meta)
    raise ValueError(f"path must be one of {PATHS} or None, got {path!r}")


@functools.lru_cache(maxsize=64)
def offsets_of(slice_widths: tuple[int, ...]) -> tuple[int, ...]:
    """The S + 1 column offsets of slices of these widths: (0, w0, w0 + w1, ...)."""
    offsets = [0]
    for width in slice_widths:
        offsets.append(offsets[-1] + width)
    return tuple(offsets)


def _grouped(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: tuple[int, ...],
    meta: LoraBatch,
) -> torch.Tensor:
    """One shrink matmul for all slices and one expand matmul per slice, per adapter present."""
    _, num_slices, rank, hidden_in = lora_a.shape
    for slot, rows in meta.derived(("slot_rows",), _slot_rows, meta):
        a = lora_a[slot].reshape(num_slices * rank, hidden_in).float()  # [S*R, K]
        shrunk = x[rows].float() @ a.T  # [n, S*R]
        for s in range(num_slices):
            begin, end = slice_offsets[s], slice_offsets[s + 1]
            scaled = shrunk[:, s * rank : (s + 1) * rank] * scales[s, slot]  # [n, R]: scale the small side
            delta = scaled @ lora_b[slot, begin:end].float().T  # [n, N_s]
            _add_rows(out[:, begin:end], rows, delta)
    return out


def _slot_rows(meta: LoraBatch) -> list[tuple[int, torch.Tensor]]:
    """(slot, its rows [n] int64) for each slot present, in slot order."""
    counts, starts = meta.slot_counts.tolist(), meta.slot_starts.tolist()
    return [
        (slot, meta.sorted_tokens[start : start + count].long())
        for slot, (start, count) in enumerate(zip(starts, counts, strict=True))
        if count > 0
    ]


def _gathered(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: tuple[int, ...],
    meta: LoraBatch,
    num_active: int,
    bagged: bool,
) -> torch.Tensor:
    """Per-token weights (read in place from the row layout, else copied), over chunks of rows."""
    _, num_slices, rank, hidden_in = lora_a.shape
    chunk = max(1, GATHER_CHUNK_ELEMENTS // elements_per_token(lora_a, lora_b))  # forced on big shapes
    columns = None
    if bagged and num_slices > 1:
        columns = meta.derived(("slice_columns", *slice_offsets), slice_columns, slice_offsets, x.device)
    # All rows active (the usual decode step): work on row ranges, no index on x or out.
    rows = None
    if num_active < meta.num_tokens:  # [n] active rows; slot -1 rows excluded
        rows = meta.derived(("active_rows", num_active), _active_rows, meta, num_active)
    for begin in range(0, num_active, chunk):
        end = min(begin + chunk, num_active)
        chunk_rows = None if rows is None else rows[begin:end]  # [n]
        # [n] int64, the same for every layer of the step
        slots = meta.derived(("slots", begin, end), _chunk_slots, token_lora, begin, end, chunk_rows)
        chunk_x = x[begin:end] if chunk_rows is None else x[chunk_rows]
        if bagged:
            bags = meta.derived(("bags", begin, end, hidden_in, num_slices, rank), _Bags.of, slots,
                                hidden_in, num_slices, rank)
            delta = _bagged_delta(chunk_x, lora_a, lora_b, slots, scales, columns, bags)
        else:
            delta = _gathered_delta(chunk_x, lora_a, lora_b, slots, scales, slice_offsets)
        if chunk_rows is None:
            _add_range(out[begin:end], delta)
        else:
            _add_rows(out, chunk_rows, delta)
    return out


def _active_rows(meta: LoraBatch, num_active: int) -> torch.Tensor:
    return meta.sorted_tokens[:num_active].long()


def _chunk_slots(token_lora: torch.Tensor, begin: int, end: int, rows: torch.Tensor | None) -> torch.Tensor:
    return (token_lora[begin:end] if rows is None else token_lora[rows]).long()


def reads_in_place(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> bool:
    """Whether the gathered form reads these weights in place: fp32, in the row layout."""
    return x.dtype == torch.float32 and is_row_layout(lora_a, lora_b)


def is_row_layout(lora_a: torch.Tensor, lora_b: torch.Tensor) -> bool:
    """True when A is stored [L, K, S, R] and B [L, R, N], seen through [L, S, R, K] / [L, N, R] views.

    In that layout the rows an `embedding_bag` sums are contiguous: slot l's A is the K rows
    (l, k) -> [S*R] and its B the R rows (l, r) -> [N]. The engine's CPU layers store it.

    Example:
        >>> a, b = torch.zeros(4, 16, 3, 8), torch.zeros(4, 8, 40)  # [L, K, S, R], [L, R, N]
        >>> is_row_layout(a.permute(0, 2, 3, 1), b.transpose(1, 2))
        True
    """
    return lora_a.permute(0, 3, 1, 2).is_contiguous() and lora_b.transpose(1, 2).is_contiguous()


@dataclass(frozen=True)
class _Bags:
    """`embedding_bag` inputs for n tokens: the rows each token sums, flat, and where each bag starts."""

    shrink_index: torch.Tensor  # [n*K]: token i sums rows (slot_i, k) of A^T viewed [L*K, S*R]
    shrink_offsets: torch.Tensor  # [n]
    expand_index: torch.Tensor  # [n*S*R]: bag (i, s) sums rows (slot_i, r) of B^T viewed [L*R, N]
    expand_offsets: torch.Tensor  # [n*S]

    @staticmethod
    def of(slots: torch.Tensor, hidden_in: int, num_slices: int, rank: int) -> _Bags:  # slots [n] int64
        device = slots.device
        shrink = (slots.unsqueeze(1) * hidden_in + torch.arange(hidden_in, device=device)).view(-1)
        expand = slots.view(-1, 1, 1) * rank + torch.arange(rank, device=device).expand(num_slices, rank)
        return _Bags(
            shrink,
            torch.arange(0, shrink.numel(), hidden_in, device=device),
            expand.reshape(-1),
            torch.arange(0, expand.numel(), rank, device=device),
        )


def _bagged_delta(
    x: torch.Tensor,  # [n, K] float32
    lora_a: torch.Tensor,  # [L, S, R, K] float32, row layout
    lora_b: torch.Tensor,  # [L, N, R] float32, row layout
    slots: torch.Tensor,  # [n] int64, all >= 0
    scales: torch.Tensor,  # [S, L] float32
    slice_columns: torch.Tensor | None,  # [N] int64 into [S*N], None for one slice
    bags: _Bags,
) -> torch.Tensor:  # [n, N] float32
    """The fp32 delta of n tokens, each reading its adapter's rows in place (no weight copy).

    `embedding_bag(mode="sum", per_sample_weights=...)` is a fused gather + weighted row sum:
    the shrink sums the K rows of A^T [S*R] weighted by x; the expand sums, for each slice, the
    R rows of B^T [N] weighted by that slice's scaled shrink, and keeps the slice's own columns.
    A constant number of ops whatever the adapters, and no [n, S*R, K] copy of the weights as
    the gathered bmm needs. (The expand computes all N columns per slice, S-fold work on
    B that is small here, rather than copying the strided column slices of B every call.)
    """
    num_slots, num_slices, rank, hidden_in = lora_a.shape
    n = slots.numel()
    a_rows = lora_a.permute(0, 3, 1, 2).reshape(num_slots * hidden_in, num_slices * rank)  # a view
    b_rows = lora_b.transpose(1, 2).reshape(num_slots * rank, -1)  # [L*R, N], a view
    shrunk = F.embedding_bag(  # [n, S*R]
        bags.shrink_index, a_rows, bags.shrink_offsets, mode="sum", per_sample_weights=x.reshape(-1)
    )
    scaled = shrunk.view(n, num_slices, rank) * scales.T.index_select(0, slots).unsqueeze(-1)  # [n, S, R]
    expanded = F.embedding_bag(  # [n*S, N]: slice s of token i in row i*S + s
        bags.expand_index, b_rows, bags.expand_offsets, mode="sum", per_sample_weights=scaled.view(-1)
    )
    if slice_columns is None:
        return expanded
    return expanded.view(n, -1).index_select(1, slice_columns)  # [n, N]: each slice's own columns


def slice_columns(slice_offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[N] int64: column c of slice s (offsets[s] <= c < offsets[s+1]) at s*N + c in [S*N]."""
    width, bounds = slice_offsets[-1], zip(slice_offsets[:-1], slice_offsets[1:], strict=True)
    return torch.cat([torch.arange(lo, hi, device=device) + s * width for s, (lo, hi) in enumerate(bounds)])


def _gathered_delta(
    x: torch.Tensor,  # [n, K]
    lora_a: torch.Tensor,  # [L, S, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    slots: torch.Tensor,  # [n] int64, all >= 0
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: tuple[int, ...],
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
