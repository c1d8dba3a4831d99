"""Multi-LoRA in torch (the CPU path, and the fallback without Triton), in two forms.

Weights come as a page pool (`lorafleet.kernels.pages`): A pages [P, S, PR, K], B pages
[P, N, PR], slot l's rank rows in pages `page_table[l]`, its true rank `ranks[l]`. The stacked
layout ([L, S, R, K], every slot padded to R) is the case of one page of R rows per slot, and
runs through the same code. Rows past a slot's rank are never used.

**Grouped**: one matmul pair per adapter present in the batch, on that adapter's rows, reading
its pages as a view when they are consecutive (the stacked layout always), else copying them
with one `index_select`. Reads each adapter once, but pays a fixed per-call cost (about 4 + 3·S
small ops) per adapter, so a decode batch of 32 tokens on 32 adapters pays it 32 times.

**Gathered**: every live token uses its own adapter's A and B, in a constant number of ops
whatever the number of adapters. Two implementations, by the weights' memory layout:

- *in place* (fp32 pages in the row layout, `is_row_layout`: A stored [P, K, S, PR], B
  [P, PR, N], as the engine's CPU layers keep them): `embedding_bag` sums, per token and page,
  the K rows of that page's A^T weighted by x (shrink), then per token and slice the r rank rows
  of its B^T weighted by the scaled shrink (expand). No weight is copied; about 8 ops per call.
- *copied* (any other layout or dtype): `index_select` copies each token's pages of A and B,
  then one batched matrix-vector product (`bmm`) per slice: ~12 ops plus the copies.

`choose_path` picks per call from the live token count T (tokens whose slot holds an adapter),
the distinct live adapters D, and E, the weight elements one live token reads on average (each
token's own rank now: S·K·PR·pages + N·rank, from the placement's host copy, no device read):

    in place:  gathered iff  T <= max(16·D, 256)  when E <= 2^16,   T <= 2·D  otherwise
    copied:    gathered iff  D >= 2  and  T <= 4·D  and  E <= 2^16
    planned:   gathered iff  T·E < 10^5 · (D·(1 + S) - 5)   (in place; copied: as above)
    grouped otherwise (several tokens per adapter, e.g. prefill; large weights)
    kernel:    planned whenever the CPU kernel takes the call (every slot <= 16 rows, in order, fp32)

*Planned* is the grouped form given the layer's `SlotWeights` (`torch_slot_weights`: each
adapter's A and B copied once into whole fp32 matrices, kept while the placement is current): one
shrink GEMM and one `addmm_` per slice per adapter, the fewest ops the grouped form can make. The
engine's CPU layers pass theirs. Where the CPU LoRA kernel is built (`native_cpu`), a planned call whose
slots each have at most `NATIVE_MAX_ROWS` rows, in order (decode), runs in it: one C++ call for
every adapter of the layer call. Its rule is a cost model fitted on two threads
(`benchmarks/kernels.py --cpu-paths`, docs/kernels.md "CPU path"): the planned form costs about
one unit (~20 µs) per op, 1 + S ops per adapter; the in-place gathered form about 5 units plus one
per 10^5 weight elements read (T·E). The other rules were measured on one thread, without it.

Memory stays bounded for any T: the gathered form works in chunks of at most
GATHER_CHUNK_ELEMENTS weight elements.

Both forms compute the delta in float32 and add it into `out` with one rounding, on live rows
only: rows with slot -1 or an empty slot (rank 0) are never read into the sum nor written, so
they stay bit-identical in every dtype (adding a zero delta would turn -0.0 into +0.0).
"""

from __future__ import annotations

import functools

import torch
from lorafleet.kernels import native_cpu
from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.pages import AdapterPages, stacked_pages
from lorafleet.kernels.torch_bags import (
    PagedBags,
    bagged_delta,
    copied_delta,
    slice_columns,
)
from lorafleet.kernels.torch_live import LiveTokens, live_tokens
from lorafleet.kernels.torch_slot_weights import SlotWeights

GROUPED = "grouped"
GATHERED = "gathered"
PATHS = (GROUPED, GATHERED)
# Measured on one CPU thread (benchmarks/kernels.py --cpu-paths, docs/kernels.md).
GATHER_MAX_ELEMENTS = 1 << 16  # E: "small" weights (10^4: gathering wins widely; 3·10^5: narrowly)
GATHER_MAX_TOKENS_PER_SLOT = 4  # copied form, small E
IN_PLACE_MAX_TOKENS_PER_SLOT = 16  # in-place form, small E
IN_PLACE_MIN_TOKENS = 256  # in-place form, small E: wins up to here even on one adapter
IN_PLACE_LARGE_MAX_TOKENS_PER_SLOT = 2  # in-place form, large E
# Planned grouped form (SlotWeights) against the in-place gathered one, in units of one small GEMM
# call (~20 µs on two threads): the gathered form reads this many weight elements per unit, and
# pays this many units whatever it reads.
PLANNED_ELEMENTS_PER_OP = 100_000
PLANNED_GATHER_FIXED_OPS = 5
# Bound on the weight elements one chunk of tokens reads (copies, for the copied form: fp32,
# 16 MiB): larger batches are cut into chunks of tokens so memory stays flat whatever T, R, K.
GATHER_CHUNK_ELEMENTS = 1 << 22
# The planned form's segments of at most this many rows go to the CPU kernel where it is built
# (`native_cpu`): a decode step's rows per adapter. Longer ones (prefill) are compute-bound GEMMs,
# MKL's strength.
NATIVE_MAX_ROWS = 16
# The two gathered implementations, looked up at call time (tests spy on them by name).
_bagged_delta = bagged_delta
_gathered_delta = copied_delta


def choose_path(
    num_active_tokens: int,
    num_active_slots: int,
    elements_per_token: int,
    *,
    in_place: bool = False,
    planned: bool = False,
    num_slices: int = 1,
) -> str:
    """'gathered' for many adapters with few tokens each (decode), else 'grouped'.

    Args:
        num_active_tokens: T, tokens of the batch whose slot holds an adapter.
        num_active_slots: D, distinct adapter slots among them.
        elements_per_token: E, the A and B elements the gathered form reads per token, on
            average (S·R·K + N·R for stacked rank R).
        in_place: the gathered form would read the weights in place (`is_row_layout`, fp32)
            rather than copy them per token.
        planned: the grouped form would run on the layer's `SlotWeights` (whole matrices).
        num_slices: S, the fused projections (the planned form makes 1 + S ops per adapter).

    Returns:
        `GATHERED` or `GROUPED` by the rule in this module's docstring.

    Example:
        >>> choose_path(32, 32, 10240), choose_path(300, 3, 10240), choose_path(4, 1, 10240)
        ('gathered', 'grouped', 'grouped')
        >>> choose_path(32, 1, 10240, in_place=True), choose_path(64, 32, 294912, in_place=True)
        ('gathered', 'gathered')
        >>> choose_path(16, 2, 32000, in_place=True, planned=True, num_slices=3)  # 8 rows per adapter
        'grouped'
        >>> choose_path(32, 8, 10240, in_place=True, planned=True, num_slices=3)  # demo q|k|v, 4 rows each
        'gathered'
    """
    tokens, slots, small = num_active_tokens, num_active_slots, elements_per_token <= GATHER_MAX_ELEMENTS
    if planned and in_place:
        grouped_ops = slots * (1 + num_slices)
        gathered_ops = PLANNED_GATHER_FIXED_OPS + tokens * elements_per_token / PLANNED_ELEMENTS_PER_OP
        return GATHERED if gathered_ops < grouped_ops else GROUPED
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
    """E = S·R·K + N·R: weight elements the gathered form reads for one token of stacked rank R."""
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
    """The stacked layout: `apply_paged` with one page of R rows per slot."""
    pages = stacked_pages(lora_a.shape[0], lora_a.shape[2], x.device)
    return apply_paged(out, x, lora_a, lora_b, scales, slice_widths, meta, pages, path=path)


def apply_paged(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    scales: torch.Tensor,  # [S, L] float32
    slice_widths: tuple[int, ...],  # S widths summing to N
    meta: LoraBatch,
    pages: AdapterPages,
    *,
    path: str | None = None,  # GROUPED / GATHERED; None = `choose_path`
    slot_weights: SlotWeights | None = None,  # the layer's copies for the planned grouped form
) -> torch.Tensor:
    """Adds each live token's `scale_s * (x @ A_s.T) @ B_s.T` into each slice of `out`, in place.

    The torch backend's entry (`lorafleet.kernels.backend_for` a CPU device): inputs are trusted,
    checked once by the public API or consistent by construction (the engine's own buffers);
    `meta` is `prepare_lora_batch` of this batch over `pages.num_slots` slots. `path` forces one
    form (tests, benchmarks); both give the same result up to the fp32 summation order.
    `slot_weights`, owned by the layer whose pages these are, makes the grouped form the planned
    one (module docstring); without it every call reads the pages as they are.
    """
    if meta.num_tokens == 0 or not meta.has_lora_tokens:
        return out
    live = meta.derived(("live", pages), live_tokens, meta, pages)
    if live.num_tokens == 0:
        return out
    offsets = offsets_of(slice_widths)
    planned = slot_weights is not None
    kernel = _kernel_runs(x, meta, pages, planned)
    if kernel and path in (None, GROUPED):  # the rule's first case, decided without the rest of it
        assert slot_weights is not None
        return _planned(out, x, lora_a_pages, lora_b_pages, scales, offsets, meta, pages, slot_weights,
                        kernel)
    in_place = reads_in_place(x, lora_a_pages, lora_b_pages)
    chosen = path or _rule(live, lora_a_pages, lora_b_pages, in_place, planned, kernel)
    if chosen == GATHERED:
        return _gathered(out, x, lora_a_pages, lora_b_pages, scales, offsets, meta, pages, live, in_place)
    if chosen == GROUPED and slot_weights is not None:
        return _planned(out, x, lora_a_pages, lora_b_pages, scales, offsets, meta, pages, slot_weights,
                        kernel)
    if chosen == GROUPED:
        return _grouped(out, x, lora_a_pages, lora_b_pages, scales, offsets, meta, pages)
    raise ValueError(f"path must be one of {PATHS} or None, got {path!r}")


def repeat_kernel_call(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    meta: LoraBatch,
    pages: AdapterPages,
    slot_weights: SlotWeights,
) -> bool:
    """`apply_paged`'s call again, without its decisions, where the layer's last call had this
    metadata and placement and ran on the CPU kernel (a decode step's every layer call after the
    first step with these rows): True if it ran. Whether the kernel takes a call depends on the
    metadata, the placement and the dtypes and strides of x and out, which are checked here."""
    call = slot_weights.last_call(meta, pages)
    if call is None or x.dtype != torch.float32 or out.dtype != torch.float32:
        return False
    if x.stride(1) != 1 or out.stride(1) != 1:
        return False
    module = native_cpu.lora_kernel()
    if module is None:  # switched off since the last call (tests, benchmarks)
        return False
    module.lora_layer(out, x, *call)
    return True


def chosen_path(
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    meta: LoraBatch,
    pages: AdapterPages,
    *,
    planned: bool = False,
) -> str:
    """The form `apply_paged` runs for this batch and these weights when no `path` is forced
    (`planned`: with `slot_weights` given)."""
    live = meta.derived(("live", pages), live_tokens, meta, pages)
    in_place = reads_in_place(x, lora_a_pages, lora_b_pages)
    return _rule(live, lora_a_pages, lora_b_pages, in_place, planned, _kernel_runs(x, meta, pages, planned))


def _rule(
    live: LiveTokens, lora_a_pages: torch.Tensor, lora_b_pages: torch.Tensor, in_place: bool, planned: bool,
    kernel: bool,
) -> str:
    if kernel:  # the CPU kernel takes the planned form's call: it beats every other form there
        return GROUPED
    _, num_slices, _, hidden_in = lora_a_pages.shape
    elements = live.elements_per_token(hidden_in, num_slices, lora_b_pages.shape[1])
    return choose_path(live.num_tokens, live.num_slots, elements, in_place=in_place, planned=planned,
                       num_slices=num_slices)


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
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: tuple[int, ...],
    meta: LoraBatch,
    pages: AdapterPages,
) -> torch.Tensor:
    """One shrink matmul per adapter present and one scaled expand per slice, on its segment.

    Each live slot's rows form a segment. When the batch already lists rows grouped by slot (the
    engine orders its rows that way), segments are row ranges of `x` and `out`, and each slice's
    expand adds into `out` in place (`addmm_`, fp32): a few tensor ops per adapter (each costs
    microseconds on a CPU), none per row and no gather. Otherwise the live rows are gathered once,
    the deltas land in one fp32 buffer in slot order, and one `index_add_` adds them into `out`.
    """
    order, segments, in_order = meta.derived(("segments", pages), _segments, meta, pages)
    scale_of = scales.tolist()  # [S][L]: host floats, one read per layer
    if in_order:  # segments are row ranges of the batch: add into `out` in place
        for slot, lo, hi in segments:
            per_slice, b = _slot_shrink(x[lo:hi].float(), lora_a_pages, lora_b_pages, pages, slot)
            for s, small in enumerate(per_slice):  # [c, r] @ [r, N_s], scaled in the product
                view = out[lo:hi, slice_offsets[s] : slice_offsets[s + 1]]
                weights = b[: small.shape[1], slice_offsets[s] : slice_offsets[s + 1]].float()
                if view.dtype == torch.float32:
                    view.addmm_(small, weights, alpha=scale_of[s][slot])
                else:  # the delta in fp32, added with one rounding
                    view.copy_(torch.addmm(view.float(), small, weights, alpha=scale_of[s][slot]))
        return out
    xs = x.index_select(0, order).float()  # [n, K] the live rows, grouped by slot
    delta = torch.empty(order.numel(), out.shape[1], dtype=torch.float32, device=x.device)  # [n, N]
    for slot, lo, hi in segments:
        per_slice, b = _slot_shrink(xs[lo:hi], lora_a_pages, lora_b_pages, pages, slot)
        for s, small in enumerate(per_slice):
            cols = slice(slice_offsets[s], slice_offsets[s + 1])
            torch.mm(small, b[: small.shape[1], cols].float(), out=delta[lo:hi, cols]).mul_(scale_of[s][slot])
    _add_rows(out, order, delta)
    return out


def _planned(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: tuple[int, ...],
    meta: LoraBatch,
    pages: AdapterPages,
    slot_weights: SlotWeights,
    kernel: bool = False,  # `_kernel_runs` of this call: the CPU kernel takes it
) -> torch.Tensor:
    """The grouped form on each slot's whole matrices: one shrink GEMM, one `addmm_` per slice.

    A slice whose scale is 0 (one the adapter does not target: its rows are zero) is skipped.
    Segments as in `_grouped`: row ranges of `out` when the batch lists rows by slot (the engine's
    order), else the live rows gathered once and added back with one `index_add_`.
    """
    order, segments, in_order = meta.derived(("segments", pages), _segments, meta, pages)
    takes_out = out.dtype == torch.float32 and out.stride(1) == 1
    module = native_cpu.lora_kernel() if kernel and takes_out else None
    if module is not None:
        module.lora_layer(out, x, *slot_weights.native_call(
            lora_a_pages, lora_b_pages, scales, pages, meta, segments, slice_offsets))
        return out
    scale_of = scales.tolist()  # [S][L]: host floats, one read per layer
    num_slices = len(slice_offsets) - 1
    rows_of = x.index_select(0, order).float() if not in_order else None  # [n, K] live rows by slot
    delta = None
    if not in_order:  # [n, N]; zeros: a skipped slice's columns are added too
        delta = torch.zeros(order.numel(), out.shape[1], dtype=torch.float32, device=x.device)
    for slot, lo, hi in segments:
        weights = slot_weights.of(lora_a_pages, lora_b_pages, pages, slot, slice_offsets)
        rank, rows = weights.rank, (x[lo:hi].float() if rows_of is None else rows_of[lo:hi])
        shrunk = rows @ weights.a  # [c, S*rank]
        for s in range(num_slices):
            alpha = scale_of[s][slot]
            if alpha == 0.0:
                continue
            small, cols = shrunk[:, s * rank : (s + 1) * rank], slice(slice_offsets[s], slice_offsets[s + 1])
            target = out[lo:hi, cols] if delta is None else delta[lo:hi, cols]
            if target.dtype == torch.float32:
                target.addmm_(small, weights.b[s], alpha=alpha)
            else:  # the delta in fp32, added with one rounding
                target.copy_(torch.addmm(target.float(), small, weights.b[s], alpha=alpha))
    if delta is not None:
        _add_rows(out, order, delta)
    return out


def _kernel_fits(x: torch.Tensor, meta: LoraBatch, pages: AdapterPages) -> bool:
    """Whether the CPU kernel can take this batch (with an fp32 `out` of unit column stride): fp32
    rows of x, every live slot's rows one range of the batch, of at most `NATIVE_MAX_ROWS` rows."""
    if x.dtype != torch.float32 or x.stride(1) != 1:
        return False
    _, segments, in_order = meta.derived(("segments", pages), _segments, meta, pages)
    return in_order and all(end - first <= NATIVE_MAX_ROWS for _, first, end in segments)


def _kernel_runs(x: torch.Tensor, meta: LoraBatch, pages: AdapterPages, planned: bool) -> bool:
    """Whether the planned form of this call would run in the CPU kernel (built, and the batch fits)."""
    return planned and native_cpu.lora_kernel() is not None and _kernel_fits(x, meta, pages)


def _slot_shrink(
    x: torch.Tensor,  # [c, K] float32, one slot's rows
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    pages: AdapterPages,
    slot: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per slice, x @ A_s.T [c, rank]; and the slot's B rows [pages * PR, N] (rank rows first)."""
    _, num_slices, page_rank, hidden_in = lora_a_pages.shape
    rank, held = pages.slot_ranks[slot], pages.slot_pages[slot]
    a_rows = lora_a_pages.permute(0, 3, 1, 2)  # [P, K, S, PR]: a view, contiguous in the row layout
    b_rows = lora_b_pages.transpose(1, 2)  # [P, PR, N]
    if len(held) == 1:  # [c, S*PR]: slice s at s*PR
        shrunk = x @ a_rows[held[0]].reshape(hidden_in, -1).float()
        return [shrunk[:, s * page_rank : s * page_rank + rank] for s in range(num_slices)], b_rows[held[0]]
    # [pages, c, S, PR]: page j holds rank rows j*PR.. of every slice
    a = _slot_pages(a_rows, pages, slot).reshape(len(held), hidden_in, -1)
    shrunk = torch.matmul(x, a.float()).view(len(held), x.shape[0], num_slices, page_rank)
    per_slice = [
        shrunk[:, :, s].permute(1, 0, 2).reshape(x.shape[0], -1)[:, :rank] for s in range(num_slices)
    ]
    return per_slice, _slot_pages(b_rows, pages, slot).reshape(len(held) * page_rank, -1)


def _segments(meta: LoraBatch, pages: AdapterPages) -> tuple[torch.Tensor, list[tuple[int, int, int]], bool]:
    """The live rows grouped by slot ([n] int64) with each live slot's (slot, lo, hi) in them; or,
    when every live slot's rows are a contiguous range of the batch (the engine orders its rows by
    slot), those ranges as (slot, first row, end row) of the batch itself, and True."""
    counts, starts = meta.slot_counts.tolist(), meta.slot_starts.tolist()
    live = [slot for slot, count in enumerate(counts) if count > 0 and pages.slot_ranks[slot] > 0]
    sorted_rows = meta.sorted_tokens.tolist()
    ranges = []
    for slot in live:
        rows = sorted_rows[starts[slot] : starts[slot] + counts[slot]]
        ranges.append((slot, rows[0], rows[-1] + 1, rows == list(range(rows[0], rows[-1] + 1))))
    runs = [meta.sorted_tokens[starts[slot] : starts[slot] + counts[slot]] for slot in live]
    order = torch.cat(runs).long() if runs else meta.sorted_tokens[:0].long()
    if all(contiguous for *_, contiguous in ranges):
        return order, [(slot, lo, hi) for slot, lo, hi, _ in ranges], True
    segments, at = [], 0
    for slot in live:
        segments.append((slot, at, at + counts[slot]))
        at += counts[slot]
    return order, segments, False


def _slot_pages(pool: torch.Tensor, pages: AdapterPages, slot: int) -> torch.Tensor:
    """[pages, ...] the slot's pages of `pool` in rank order: a slice when consecutive, else a copy."""
    first, held = pages.first_page[slot], len(pages.slot_pages[slot])
    if first >= 0:
        return pool[first : first + held]
    return pool.index_select(0, pages.page_table[slot, :held])


def _gathered(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a_pages: torch.Tensor,  # [P, S, PR, K]
    lora_b_pages: torch.Tensor,  # [P, N, PR]
    scales: torch.Tensor,  # [S, L] float32
    slice_offsets: tuple[int, ...],
    meta: LoraBatch,
    pages: AdapterPages,
    live: LiveTokens,
    bagged: bool,
) -> torch.Tensor:
    """Per-token weights (read in place from the row layout, else copied), over chunks of rows."""
    _, num_slices, page_rank, hidden_in = lora_a_pages.shape
    held = live.max_pages * page_rank  # rank rows of the token with the most pages
    chunk = max(1, GATHER_CHUNK_ELEMENTS // (num_slices * held * hidden_in + lora_b_pages.shape[1] * held))
    columns = None
    if bagged and num_slices > 1:
        columns = meta.derived(("slice_columns", *slice_offsets), slice_columns, slice_offsets, x.device)
    assert meta.token_lora is not None  # set by prepare_lora_batch
    for begin in range(0, live.num_tokens, chunk):
        end = min(begin + chunk, live.num_tokens)
        chunk_rows = None if live.rows is None else live.rows[begin:end]  # [n]; None: rows begin:end
        # [n] int64, the same for every layer of the step
        key = ("slots", pages, begin, end)
        slots = meta.derived(key, _chunk_slots, meta.token_lora, begin, end, chunk_rows)
        chunk_x = x[begin:end] if chunk_rows is None else x.index_select(0, chunk_rows)
        if bagged:
            bags_key = ("bags", pages, begin, end, hidden_in, num_slices)
            bags = meta.derived(bags_key, PagedBags.of, slots, pages, hidden_in, num_slices)
            delta = _bagged_delta(chunk_x, lora_a_pages, lora_b_pages, scales, columns, bags)
        else:
            delta = _gathered_delta(chunk_x, lora_a_pages, lora_b_pages, slots, scales, slice_offsets, pages,
                                    live.max_pages)
        if chunk_rows is None:
            _add_range(out[begin:end], delta)
        else:
            _add_rows(out, chunk_rows, delta)
    return out


def _chunk_slots(token_lora: torch.Tensor, begin: int, end: int, rows: torch.Tensor | None) -> torch.Tensor:
    return (token_lora[begin:end] if rows is None else token_lora.index_select(0, rows)).long()


def reads_in_place(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> bool:
    """Whether the gathered form reads these weights in place: fp32, in the row layout."""
    return x.dtype == torch.float32 and is_row_layout(lora_a, lora_b)


def is_row_layout(lora_a: torch.Tensor, lora_b: torch.Tensor) -> bool:
    """True when A is stored [P, K, S, R] and B [P, R, N], seen through [P, S, R, K] / [P, N, R] views.

    In that layout the rows an `embedding_bag` sums are contiguous: page p's A is the K rows
    (p, k) -> [S*R] and its B the R rows (p, r) -> [N]. The engine's CPU layers store it.

    Example:
        >>> a, b = torch.zeros(4, 16, 3, 8), torch.zeros(4, 8, 40)  # [P, K, S, R], [P, R, N]
        >>> is_row_layout(a.permute(0, 2, 3, 1), b.transpose(1, 2))
        True
    """
    return lora_a.permute(0, 3, 1, 2).is_contiguous() and lora_b.transpose(1, 2).is_contiguous()


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
