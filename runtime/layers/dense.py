"""`linear`: `torch.nn.functional.linear`, computed in column blocks where this machine runs that faster.

On the CPU, torch's fp32 matmul (MKL's sgemm) packs the weight for every call, and on some machines
it runs a weight with many output rows well below its speed on narrower ones. Computing the same
output in blocks of at most `COLUMN_BLOCK` output features, each block one `mm` into its columns of
the result, was 10-40 % faster on an AMD EPYC (AVX2) on the shapes of a decode or prefill step, but
5-20 % slower on an Intel Xeon (AVX-512) at 32 rows and faster there at 8 (`docs/runtime.md`, "A
real-sized model"). So which form runs is measured, not assumed: when an engine starts on the CPU,
`tune` times both forms on the model's own wide weights at a few batch sizes and keeps a `BlockPlan`
of the (weight shape, row class) pairs where the blocks win; until then (and on anything the plan
does not name) `linear` is `F.linear`. Each output element is the same dot product computed by the
same kernel, so the choice never changes a value: the blocks are bit-identical to `F.linear` on every
shape of the supported models and on odd ones (`tests/runtime/test_dense.py`). A single row (a
matrix-vector product), anything not fp32 on the CPU, and weights of one block are always `F.linear`.

The plan is process-wide, like the BLAS library and the thread count it describes; the engine (or a
shard's worker) that builds a model sets it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COLUMN_BLOCK = 1024  # output features per block (512-2048 measured; 1024 best on every shape)
BLOCK_ALIGN = 64  # block starts are multiples of this: MKL's column panels line up with F.linear's
MIN_ROWS = 2  # fewer rows: a matrix-vector product, where blocks only add calls
ROW_CLASSES = (8, 32, 256)  # rows timed for each class: 2-15 rows, 16-127 (decode), 128+ (prefill)
TUNE_ROUNDS = 3  # alternations of the two forms per (shape, row class); the fastest of each counts
TUNE_MARGIN = 0.03  # the blocks must be this much faster, or the plain call is kept
TUNE_BUDGET_S = 10.0  # no pair is timed once the timed calls cost this (SmolLM2 shape: 1.5-3 s in all)


def row_class(rows: int) -> int:
    """The index into `ROW_CLASSES` of a batch of `rows` rows."""
    return 0 if rows < 16 else 1 if rows < 128 else 2


@dataclass(frozen=True)
class BlockPlan:
    """The (out features, in features, row class) where column blocks beat one `F.linear` here."""

    blocked: frozenset[tuple[int, int, int]] = frozenset()


@dataclass(frozen=True)
class Timing:
    """One measured pair: microseconds per call of `F.linear` and of the column blocks."""

    out_features: int
    in_features: int
    rows: int
    plain_us: float
    blocks_us: float

    @property
    def blocks_win(self) -> bool:
        """Whether the blocks were at least `TUNE_MARGIN` faster."""
        return self.blocks_us < (1 - TUNE_MARGIN) * self.plain_us


_plan = BlockPlan()  # the process's plan: `set_plan` (by `tune`) is its only writer


def set_plan(plan: BlockPlan) -> BlockPlan:
    """Makes `plan` the process's plan; returns the one it replaces."""
    global _plan
    previous, _plan = _plan, plan
    return previous


def current_plan() -> BlockPlan:
    return _plan


def is_wide_cpu_weight(weight: torch.Tensor) -> bool:
    """Whether the blocks can apply to this weight at all: fp32 on the CPU, wider than one block."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.shape[0] > COLUMN_BLOCK


def can_use_blocks(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the blocks are a candidate: a wide CPU weight and a flat fp32 batch of several rows."""
    return x.dtype == torch.float32 and x.dim() == 2 and x.shape[0] >= MIN_ROWS and is_wide_cpu_weight(weight)


def uses_column_blocks(x: torch.Tensor, weight: torch.Tensor, plan: BlockPlan | None = None) -> bool:
    """Whether `linear(x, weight)` runs in column blocks under `plan` (by default the process's)."""
    plan = _plan if plan is None else plan
    return (
        bool(plan.blocked)  # an empty plan (GPU, nothing measured, blocks never won): nothing to check
        and can_use_blocks(x, weight)
        and (weight.shape[0], weight.shape[1], row_class(x.shape[0])) in plan.blocked
    )


@functools.lru_cache(maxsize=64)  # a handful of widths per model, asked on every matmul
def column_blocks(total: int) -> tuple[tuple[int, int], ...]:
    """`total` columns cut into the fewest blocks of at most `COLUMN_BLOCK` (+ `BLOCK_ALIGN`) of
    nearly equal widths, each starting at a multiple of `BLOCK_ALIGN`. MKL computes a block's
    columns in panels from its start, and a narrow or misaligned tail in another summation
    order (a one-column block becomes a matrix-vector product): aligned starts keep every column
    in the panel, and so the order, it has in one `F.linear`.

    Example:
        >>> column_blocks(2049)
        ((0, 640), (640, 1344), (1344, 2049))
    """
    count = -(-total // COLUMN_BLOCK)
    starts = [total * i // count // BLOCK_ALIGN * BLOCK_ALIGN for i in range(count)]
    bounds = [*starts, total]
    return tuple(zip(bounds[:-1], bounds[1:], strict=True))


def blocked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed in `column_blocks` (x [T, K] fp32 on the CPU)."""
    total = weight.shape[0]
    out = torch.empty(x.shape[0], total, dtype=x.dtype, device=x.device)
    for lo, hi in column_blocks(total):
        block = weight[lo:hi].t()
        if bias is None:
            torch.mm(x, block, out=out[:, lo:hi])
        else:
            torch.addmm(bias[lo:hi], x, block, out=out[:, lo:hi])
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x [T, K], weight [N, K], bias [N]: the same values, bit for bit,
    in whichever form the process's plan says is faster for this shape."""
    if uses_column_blocks(x, weight):
        return blocked_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def seconds_per_call(call: Callable[[], object], repeats: int) -> float:
    """Wall seconds per call of `call`, over `repeats` calls after one unmeasured call."""
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


@dataclass(frozen=True)
class PlanMeasurement:
    """What `measure_plan` found: the plan, each pair's timing, and the pairs left unmeasured."""

    plan: BlockPlan
    timings: list[Timing]
    unmeasured: list[tuple[int, int, int]]  # (out features, in features, rows): plain, untimed


def measure_plan(
    weights: Iterable[torch.Tensor],
    *,
    clock: Callable[[functools.partial[torch.Tensor], int], float] = seconds_per_call,
    budget_s: float = TUNE_BUDGET_S,
) -> PlanMeasurement:
    """Times `F.linear` against the column blocks on each distinct candidate weight shape at each
    of `ROW_CLASSES`' row counts (the two forms alternated `TUNE_ROUNDS` times, the fastest of each
    compared), and returns the plan of the pairs where the blocks are `TUNE_MARGIN` faster, with
    every timing. The weights are the model's own (no copy); the inputs are random.

    The row classes are timed in order (decode-sized batches first), and once the timed calls
    have cost `budget_s` seconds the remaining pairs are left to `F.linear` untimed: a large model
    on a slow CPU starts a bounded time later, and what it gives up is the prefill-sized choices.
    """
    by_shape: dict[tuple[int, int], torch.Tensor] = {}
    for weight in weights:
        if is_wide_cpu_weight(weight):
            by_shape.setdefault((weight.shape[0], weight.shape[1]), weight)
    generator = torch.Generator().manual_seed(0)
    blocked: set[tuple[int, int, int]] = set()
    timings, unmeasured = [], []
    spent = 0.0
    for index, rows in enumerate(ROW_CLASSES):
        for (out_features, in_features), weight in sorted(by_shape.items()):
            if spent >= budget_s:
                unmeasured.append((out_features, in_features, rows))
                continue
            x = torch.randn(rows, in_features, generator=generator)
            repeats = max(1, min(20, int(2e8 // (2 * rows * in_features * out_features))))  # ~5-50 ms
            plain, blocks = [], []
            for _ in range(TUNE_ROUNDS):
                plain.append(clock(functools.partial(F.linear, x, weight), repeats))
                blocks.append(clock(functools.partial(blocked_linear, x, weight), repeats))
            spent += (sum(plain) + sum(blocks)) * (repeats + 1)  # + the unmeasured call of each
            timing = Timing(out_features, in_features, rows, min(plain) * 1e6, min(blocks) * 1e6)
            timings.append(timing)
            if timing.blocks_win:
                blocked.add((out_features, in_features, index))
    return PlanMeasurement(BlockPlan(frozenset(blocked)), timings, unmeasured)


def tune(weights: Iterable[torch.Tensor], say: Callable[[str], None] | None = None) -> BlockPlan:
    """`measure_plan` on a model's weights, made the process's plan; `say` gets one line about it."""
    start = time.perf_counter()
    found = measure_plan(weights)
    set_plan(found.plan)
    if say is not None and found.timings:
        chosen = ", ".join(
            f"{t.out_features}x{t.in_features}@{t.rows} {'blocks' if t.blocks_win else 'plain'}"
            f" {t.plain_us / max(t.blocks_us, 1e-9):.2f}"
            for t in found.timings
        )
        left = (f"; {len(found.unmeasured)} (shape, batch) pairs left plain, untimed (time budget)"
                if found.unmeasured else "")
        say(f"CPU matmul forms measured in {time.perf_counter() - start:.1f} s "
            f"(weight@rows form, plain/blocks speed): {chosen}{left}")
    return found.plan
