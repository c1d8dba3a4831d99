"""`layers.dense`: the column-blocked CPU matmul equals `F.linear` bit for bit, and which form runs
is the measured plan's choice."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams
from lorafleet.runtime.layers import dense

from tests.fixtures import tiny_model

# Odd widths, and the fused q|k|v, gate|up and LM head widths of SmolLM2, Qwen2.5-0.5B and Llama 3 8B.
WIDTHS = [dense.COLUMN_BLOCK + 1, 2049, 3001, 4000, 1152, 3072, 9728, 6144, 28672, 49152]


@pytest.fixture
def restore_plan() -> Iterator[None]:
    previous = dense.current_plan()
    yield
    dense.set_plan(previous)


@pytest.mark.parametrize("rows", [2, 7, 32, 300])
@pytest.mark.parametrize("out_features", WIDTHS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_blocks_equal_f_linear_bit_for_bit(rows: int, out_features: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(rows * out_features)
    x = torch.randn(rows, 576, generator=generator)
    weight = torch.randn(out_features, 576, generator=generator)
    bias = torch.randn(out_features, generator=generator) if with_bias else None
    assert dense.can_use_blocks(x, weight)
    assert torch.equal(dense.blocked_linear(x, weight, bias), F.linear(x, weight, bias))


def test_linear_runs_the_form_the_plan_names(restore_plan: None) -> None:
    x, weight = torch.randn(32, 96), torch.randn(3000, 96)
    assert not dense.uses_column_blocks(x, weight, dense.BlockPlan())  # nothing measured: plain
    plan = dense.BlockPlan(frozenset({(3000, 96, dense.row_class(32))}))
    assert dense.uses_column_blocks(x, weight, plan)
    assert not dense.uses_column_blocks(x[:8], weight, plan)  # another row class
    assert not dense.uses_column_blocks(x, torch.randn(3000, 97), plan)  # another shape
    dense.set_plan(plan)
    assert dense.uses_column_blocks(x, weight)
    assert torch.equal(dense.linear(x, weight), F.linear(x, weight))


def test_strided_input_and_weight_view() -> None:
    """The layers pass views: a reshaped attention output, a weight slice of a fused layer."""
    x = torch.randn(96, 40).t()  # [40, 96], not contiguous
    fused = torch.randn(5000, 96)
    weight = fused[1000:4500]
    assert torch.equal(dense.blocked_linear(x, weight), F.linear(x, weight))


@pytest.mark.parametrize(
    ("x", "weight"),
    [
        (torch.randn(1, 64), torch.randn(4096, 64)),  # one row: a matrix-vector product
        (torch.randn(8, 64), torch.randn(dense.COLUMN_BLOCK, 64)),  # one block already
        (torch.randn(8, 64, dtype=torch.bfloat16), torch.randn(4096, 64, dtype=torch.bfloat16)),
        (torch.randn(2, 8, 64), torch.randn(4096, 64)),  # not a flat batch
    ],
)
def test_other_cases_are_f_linear_whatever_the_plan(x: torch.Tensor, weight: torch.Tensor) -> None:
    everything = dense.BlockPlan(frozenset(
        (weight.shape[0], weight.shape[-1], c) for c in range(len(dense.ROW_CLASSES))
    ))
    assert not dense.can_use_blocks(x, weight)
    assert not dense.uses_column_blocks(x, weight, everything)


def test_blocks_cover_every_column_once() -> None:
    for total in (1025, 2048, 2049, 151936):
        blocks = dense.column_blocks(total)
        assert blocks[0][0] == 0 and blocks[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        widths = [hi - lo for lo, hi in blocks]
        assert all(lo % dense.BLOCK_ALIGN == 0 for lo, _ in blocks)
        assert max(widths) <= dense.COLUMN_BLOCK + dense.BLOCK_ALIGN
        assert min(widths) >= dense.COLUMN_BLOCK // 2


def test_measure_plan_keeps_the_blocks_only_where_they_win_by_the_margin() -> None:
    """A scripted clock: blocks 10 % faster for 3000x64 at 8 rows, 1 % faster (under the margin) for
    2000x32 everywhere, slower elsewhere. Duplicates are timed once; narrow and bf16 weights never."""
    timed: list[tuple[str, tuple[int, ...], int]] = []

    def clock(call: functools.partial[torch.Tensor], repeats: int) -> float:
        x, weight = call.args
        blocks = call.func is dense.blocked_linear
        assert blocks or call.func is F.linear
        timed.append(("blocks" if blocks else "plain", tuple(weight.shape), x.shape[0]))
        if not blocks:
            return 1.0
        if tuple(weight.shape) == (3000, 64) and x.shape[0] == 8:
            return 0.9
        return 0.99 if tuple(weight.shape) == (2000, 32) else 1.2

    weights = [torch.empty(3000, 64), torch.empty(3000, 64), torch.empty(500, 64),
               torch.empty(3000, 64, dtype=torch.bfloat16), torch.empty(2000, 32)]
    found = dense.measure_plan(weights, clock=clock, budget_s=float("inf"))
    assert found.plan == dense.BlockPlan(frozenset({(3000, 64, 0)}))
    assert [(t.out_features, t.in_features, t.rows) for t in found.timings] == [  # decode sizes first
        (2000, 32, 8), (3000, 64, 8), (2000, 32, 32), (3000, 64, 32), (2000, 32, 256), (3000, 64, 256)
    ]
    assert found.unmeasured == []
    assert len(timed) == 6 * 2 * dense.TUNE_ROUNDS
    assert {shape for _, shape, _ in timed} == {(3000, 64), (2000, 32)}


def test_measure_plan_stops_timing_at_its_budget_and_leaves_the_rest_plain() -> None:
    """A clock that says the blocks take 0.5 s a call and `F.linear` 1 s: the first pair's timed
    calls (3 rounds x 2 forms x (repeats + 1 unmeasured) calls) exceed a 10 s budget at once."""
    def clock(call: functools.partial[torch.Tensor], repeats: int) -> float:
        return 0.5 if call.func is dense.blocked_linear else 1.0

    weights = [torch.empty(3000, 64), torch.empty(2000, 32)]
    found = dense.measure_plan(weights, clock=clock, budget_s=10.0)
    assert [(t.out_features, t.rows) for t in found.timings] == [(2000, 8)]
    assert found.plan == dense.BlockPlan(frozenset({(2000, 32, 0)}))
    assert found.unmeasured == [
        (3000, 64, 8), (2000, 32, 32), (3000, 64, 32), (2000, 32, 256), (3000, 64, 256)
    ]


def test_engine_measures_the_plan_at_start_and_answers_the_same_under_any_plan(restore_plan: None) -> None:
    """The demo-size model's gate|up (2 x 704 = 1408 outputs) is the one weight wider than a block."""
    said: list[str] = []
    engine = Engine.from_pretrained(tiny_model("mistral", "demo"), progress=said.append,
                                    max_loaded_adapters=0)
    [line] = [s for s in said if s.startswith("CPU matmul forms measured")]
    assert "1408x256@8" in line and "1408x256@256" in line
    assert {shape[:2] for shape in dense.current_plan().blocked} <= {(1408, 256)}
    params = SamplingParams(max_new_tokens=6)
    requests = [GenerationRequest(prompt, params, decoder_input_details=True)
                for prompt in ("The adapter", "Many LoRAs on one base")]
    answers = []
    with engine:
        for plan in (dense.BlockPlan(), dense.BlockPlan(frozenset((1408, 256, c) for c in range(3)))):
            dense.set_plan(plan)
            answers.append([(r.tokens, r.prompt_tokens) for r in engine.generate(requests)])
    assert answers[0] == answers[1]  # ids and log-probs, prompt and generated, bit for bit
