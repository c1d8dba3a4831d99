"""`linear`: `torch.nn.functional.linear` on the CPU in whichever of three forms this machine runs fastest.

On the CPU, torch's fp32 matmul is MKL's sgemm, which packs the weight for every call, and whose
speed at a decode step's few rows depends on the machine. Two other forms compute the same product:

- **blocks**: the output in blocks of at most `COLUMN_BLOCK` output features, each block one `mm`
  into its columns of the result. 10-40 % faster than one call on an AMD EPYC (AVX2) on a decode or
  prefill step's shapes, 5-20 % slower on an Intel Xeon (AVX-512) at 32 rows and faster at 8. Each
  output element is the same dot product computed by the same kernel: bit-identical to `F.linear`
  (`tests/runtime/test_dense.py`). Only for weights wider than one block, at several rows.
- **onednn**: the same fp32 product through oneDNN (`torch.ops.mkldnn._linear_pointwise`, the op
  torch's own CPU compiler emits for a linear layer), which has its own kernels for each CPU. 1.1-2×
  faster than MKL on an AMD EPYC (AVX-512) at 32 rows (`docs/runtime.md`, "Sixth pass"). It sums
  in another order, so values differ from `F.linear` in the last bits (as any two fp32 GEMMs do;
  still a full fp32 product, never a reduced precision unless the process asks torch for one).
  Only for weights of at least `MIN_ONEDNN_ELEMENTS`: below that a call is mostly overhead.

So which form runs is measured, not assumed: when an engine starts on the CPU, `tune` times the
forms that can apply on the model's own weights at a few batch sizes and keeps a `MatmulPlan` of
the (weight shape, row class) pairs where another form beats `F.linear` by `TUNE_MARGIN`; until
then (and on anything the plan does not name) `linear` is `F.linear`. Anything not fp32 on the
CPU and any input that is not a flat batch are always `F.linear`.

The plan is process-wide, like the BLAS library and the thread count it describes; the engine (or a
shard's worker) that builds a model sets it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PLAIN, BLOCKS, ONEDNN = "plain", "blocks", "onednn"
COLUMN_BLOCK = 1024  # output features per block (512-2048 measured; 1024 best on every shape)
BLOCK_ALIGN = 64  # block starts are multiples of this: MKL's column panels line up with F.linear's
MIN_ONEDNN_ELEMENTS = 1 << 19  # 2 MiB of fp32 weight: SmolLM2's q|k|v and up; no test model's weight
MIN_BLOCK_ROWS = 2  # fewer rows: a matrix-vector product, where blocks only add calls
ROW_CLASSES = (1, 8, 32, 256)  # rows timed per class: 1 (one stream), 2-15, 16-127 (decode), 128+
TUNE_ROUNDS = 3  # alternations of the forms per (shape, row class); the fastest of each counts
TUNE_MARGIN = 0.03  # another form must be this much faster, or the plain call is kept
TUNE_BUDGET_S = 10.0  # no pair is timed once the timed calls cost this (SmolLM2 shape: ~3 s in all)


def row_class(rows: int) -> int:
    """The index into `ROW_CLASSES` of a batch of `rows` rows."""
    return 0 if rows < 2 else 1 if rows < 16 else 2 if rows < 128 else 3


@dataclass(frozen=True)
class MatmulPlan:
    """The form that beat `F.linear` here, by (out features, in features, row class); absent: plain.
    Every entry names a form its shape can take at its row class (checked here, once, so that the
    per-call lookup need not)."""

    forms: Mapping[tuple[int, int, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for (out_features, in_features, index), form in self.forms.items():
            rows = ROW_CLASSES[index]
            if form not in (BLOCKS, ONEDNN) or not shape_takes(form, out_features, in_features, rows):
                raise ValueError(f"a {out_features}x{in_features} weight cannot run in form {form!r} "
                                 f"at {rows} rows")


@dataclass(frozen=True)
class Timing:
    """One measured pair: microseconds per call of each form timed (`PLAIN` always)."""

    out_features: int
    in_features: int
    rows: int
    us: Mapping[str, float]

    @property
    def chosen(self) -> str:
        """The fastest form if it is at least `TUNE_MARGIN` faster than `F.linear`, else `PLAIN`."""
        fastest = min(self.us, key=self.us.__getitem__)
        return fastest if self.us[fastest] < (1 - TUNE_MARGIN) * self.us[PLAIN] else PLAIN

    @property
    def speedup(self) -> float:
        """`F.linear`'s time over the fastest other form's (below 1: every other form was slower)."""
        others = [us for form, us in self.us.items() if form != PLAIN]
        return self.us[PLAIN] / max(min(others), 1e-9)


_plan = MatmulPlan()  # the process's plan: `set_plan` (by `tune`) is its only writer


def set_plan(plan: MatmulPlan) -> MatmulPlan:
    """Makes `plan` the process's plan; returns the one it replaces."""
    global _plan
    previous, _plan = _plan, plan
    return previous


def current_plan() -> MatmulPlan:
    return _plan


@functools.cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear op (x86 and Arm CPU builds do) and it computes a small
    product right on this machine (asked once per process: a build or CPU where it fails only loses
    the form, never the engine's start)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    x, weight = torch.arange(8.0).reshape(2, 4), torch.arange(12.0).reshape(3, 4)
    try:
        product = torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    except RuntimeError:
        return False
    return torch.equal(product, x @ weight.t())  # small integers: exact in any summation order


def shape_takes(form: str, out_features: int, in_features: int, rows: int) -> bool:
    """Whether an fp32 CPU weight of this shape can run in `form` at this many rows."""
    if form == BLOCKS:
        return out_features > COLUMN_BLOCK and rows >= MIN_BLOCK_ROWS
    if form == ONEDNN:
        return out_features * in_features >= MIN_ONEDNN_ELEMENTS and onednn_available()
    return form == PLAIN


def candidate_forms(weight: torch.Tensor, rows: int = MIN_BLOCK_ROWS) -> tuple[str, ...]:
    """The forms other than `F.linear` that can apply to this weight at this many rows (none unless
    fp32 on the CPU)."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
        return ()
    out_features, in_features = weight.shape
    return tuple(form for form in (BLOCKS, ONEDNN) if shape_takes(form, out_features, in_features, rows))


def takes_other_forms(x: torch.Tensor) -> bool:
    """Whether an input can go another way than `F.linear`: a flat fp32 batch on the CPU."""
    return x.dtype == torch.float32 and x.dim() == 2 and x.shape[0] > 0 and x.device.type == "cpu"


def form_of(x: torch.Tensor, weight: torch.Tensor, plan: MatmulPlan | None = None) -> str:
    """The form `linear(x, weight)` runs under `plan` (by default the process's). The plan's entries
    are valid for their shapes (`MatmulPlan`), so only the dtypes are left to check."""
    plan = _plan if plan is None else plan
    if not plan.forms or not takes_other_forms(x) or weight.dtype != torch.float32:
        return PLAIN  # an empty plan: GPU, or nothing measured
    return plan.forms.get((weight.shape[0], weight.shape[1], row_class(x.shape[0])), PLAIN)


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


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through oneDNN (x [T, K] fp32 on the CPU): the same product,
    summed in oneDNN's order."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


FORM_CALLS: dict[str, Callable[..., torch.Tensor]] = {
    PLAIN: F.linear, BLOCKS: blocked_linear, ONEDNN: onednn_linear,
}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x [T, K], weight [N, K], bias [N], in whichever form the
    process's plan says is faster for this shape."""
    return FORM_CALLS[form_of(x, weight)](x, weight, bias)


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

    plan: MatmulPlan
    timings: list[Timing]
    unmeasured: list[tuple[int, int, int]]  # (out features, in features, rows): plain, untimed


@torch.no_grad()  # any weights: the model's own (frozen) or a module's (e.g. a benchmark's)
def measure_plan(
    weights: Iterable[torch.Tensor],
    *,
    clock: Callable[[functools.partial[torch.Tensor], int], float] = seconds_per_call,
    budget_s: float = TUNE_BUDGET_S,
) -> PlanMeasurement:
    """Times `F.linear` against the other forms that can apply (`candidate_forms`) on each distinct
    weight shape at each of `ROW_CLASSES`' row counts (the forms alternated `TUNE_ROUNDS` times, the
    fastest of each compared), and returns the plan of the pairs where another form is
    `TUNE_MARGIN` faster, with every timing. The weights are the model's own (no copy); the inputs
    are random.

    The row classes are timed in order (decode-sized batches first), and once the timed calls
    have cost `budget_s` seconds the remaining pairs are left to `F.linear` untimed: a large model
    on a slow CPU starts a bounded time later, and what it gives up is the prefill-sized choices.
    """
    by_shape: dict[tuple[int, int], torch.Tensor] = {}
    for weight in weights:
        if candidate_forms(weight):
            by_shape.setdefault((weight.shape[0], weight.shape[1]), weight)
    generator = torch.Generator().manual_seed(0)
    forms: dict[tuple[int, int, int], str] = {}
    timings, unmeasured = [], []
    spent = 0.0
    for index, rows in enumerate(ROW_CLASSES):
        for (out_features, in_features), weight in sorted(by_shape.items()):
            candidates = candidate_forms(weight, rows)
            if not candidates:  # blocks at one row
                continue
            if spent >= budget_s:
                unmeasured.append((out_features, in_features, rows))
                continue
            x = torch.randn(rows, in_features, generator=generator)
            repeats = max(1, min(20, int(2e8 // (2 * rows * in_features * out_features))))  # ~5-50 ms
            seconds: dict[str, list[float]] = {form: [] for form in (PLAIN, *candidates)}
            for _ in range(TUNE_ROUNDS):
                for form, times in seconds.items():
                    times.append(clock(functools.partial(FORM_CALLS[form], x, weight), repeats))
            spent += sum(map(sum, seconds.values())) * (repeats + 1)  # + the unmeasured call of each
            timing = Timing(out_features, in_features, rows, {f: min(t) * 1e6 for f, t in seconds.items()})
            timings.append(timing)
            if timing.chosen != PLAIN:
                forms[out_features, in_features, index] = timing.chosen
    return PlanMeasurement(MatmulPlan(forms), timings, unmeasured)


def tune(weights: Iterable[torch.Tensor], say: Callable[[str], None] | None = None) -> MatmulPlan:
    """`measure_plan` on a model's weights, made the process's plan; `say` gets one line about it."""
    start = time.perf_counter()
    found = measure_plan(weights)
    set_plan(found.plan)
    if say is not None and found.timings:
        chosen = ", ".join(
            f"{t.out_features}x{t.in_features}@{t.rows} {t.chosen} {t.speedup:.2f}" for t in found.timings
        )
        left = (f"; {len(found.unmeasured)} (shape, batch) pairs left plain, untimed (time budget)"
                if found.unmeasured else "")
        say(f"CPU matmul forms measured in {time.perf_counter() - start:.1f} s "
            f"(weight@rows form kept, F.linear's time / the fastest other form's): {chosen}{left}")
    return found.plan
