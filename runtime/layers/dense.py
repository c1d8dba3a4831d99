"""`linear`: `torch.nn.functional.linear`, computed in column blocks where that is faster on the CPU.

On the CPU, torch's fp32 matmul (MKL's sgemm) packs the weight for every call, and for a weight
with many output rows it runs well below its speed on narrower ones. Computing the same output in
blocks of at most `COLUMN_BLOCK` output features, each block one `mm` into its columns of the result, was
10-30 % faster on the shapes of a decode or prefill step and 25-40 % on an LM head (interleaved
runs on the 2-core CI machine, `docs/runtime.md`, "A real-sized model"). Each output element is
the same dot product computed by the same kernel: the result is bit-identical to `F.linear` on
every shape of the supported models and on odd ones (`tests/runtime/test_dense.py`). A single
row (a matrix-vector product) gains nothing and goes to `F.linear` as it is, as does everything
that is not fp32 on the CPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

COLUMN_BLOCK = 1024  # output features per block (512-2048 measured; 1024 best on every shape)
BLOCK_ALIGN = 64  # block starts are multiples of this: MKL's column panels line up with F.linear's
MIN_ROWS = 2  # fewer rows: a matrix-vector product, where blocks only add calls


def uses_column_blocks(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear(x, weight)` runs in column blocks rather than as one `F.linear`."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 2
        and x.shape[0] >= MIN_ROWS
        and weight.shape[0] > COLUMN_BLOCK
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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x [T, K], weight [N, K], bias [N]: the same values, bit for bit.

    Example:
        >>> x, w = torch.randn(4, 8), torch.randn(3000, 8)
        >>> torch.equal(linear(x, w), F.linear(x, w))
        True
    """
    if not uses_column_blocks(x, weight):
        return F.linear(x, weight, bias)
    total = weight.shape[0]
    out = torch.empty(x.shape[0], total, dtype=x.dtype, device=x.device)
    for lo, hi in column_blocks(total):
        block = weight[lo:hi].t()
        if bias is None:
            torch.mm(x, block, out=out[:, lo:hi])
        else:
            torch.addmm(bias[lo:hi], x, block, out=out[:, lo:hi])
    return out
