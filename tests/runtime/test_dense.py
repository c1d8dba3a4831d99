"""`layers.dense.linear`: the column-blocked CPU matmul equals `F.linear` bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lorafleet.runtime.layers import dense

# Odd widths, and the fused q|k|v, gate|up and LM head widths of SmolLM2, Qwen2.5-0.5B and Llama 3 8B.
WIDTHS = [dense.COLUMN_BLOCK + 1, 2049, 3001, 4000, 1152, 3072, 9728, 6144, 28672, 49152]


@pytest.mark.parametrize("rows", [2, 7, 32, 300])
@pytest.mark.parametrize("out_features", WIDTHS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_blocks_equal_f_linear_bit_for_bit(rows: int, out_features: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(rows * out_features)
    x = torch.randn(rows, 576, generator=generator)
    weight = torch.randn(out_features, 576, generator=generator)
    bias = torch.randn(out_features, generator=generator) if with_bias else None
    assert dense.uses_column_blocks(x, weight)
    assert torch.equal(dense.linear(x, weight, bias), F.linear(x, weight, bias))


def test_strided_input_and_weight_view() -> None:
    """The layers pass views: a reshaped attention output, a weight slice of a fused layer."""
    x = torch.randn(96, 40).t()  # [40, 96], not contiguous
    fused = torch.randn(5000, 96)
    weight = fused[1000:4500]
    assert torch.equal(dense.linear(x, weight), F.linear(x, weight))


@pytest.mark.parametrize(
    ("x", "weight"),
    [
        (torch.randn(1, 64), torch.randn(4096, 64)),  # one row: a matrix-vector product
        (torch.randn(8, 64), torch.randn(dense.COLUMN_BLOCK, 64)),  # one block already
        (torch.randn(8, 64, dtype=torch.bfloat16), torch.randn(4096, 64, dtype=torch.bfloat16)),
        (torch.randn(2, 8, 64), torch.randn(4096, 64)),  # not a flat batch
    ],
)
def test_other_cases_are_f_linear(x: torch.Tensor, weight: torch.Tensor) -> None:
    assert not dense.uses_column_blocks(x, weight)
    assert torch.equal(dense.linear(x, weight), F.linear(x, weight))


def test_blocks_cover_every_column_once() -> None:
    for total in (1025, 2048, 2049, 151936):
        blocks = dense.column_blocks(total)
        assert blocks[0][0] == 0 and blocks[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        widths = [hi - lo for lo, hi in blocks]
        assert all(lo % dense.BLOCK_ALIGN == 0 for lo, _ in blocks)
        assert max(widths) <= dense.COLUMN_BLOCK + dense.BLOCK_ALIGN
        assert min(widths) >= dense.COLUMN_BLOCK // 2
