"""`layers.dense`: the column-blocked CPU matmul equals `F.linear` bit for bit, oneDNN's matches it
to fp32 rounding, and which form runs is the measured plan's choice."""

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
    assert dense.BLOCKS in dense.candidate_forms(weight) and dense.takes_other_forms(x)
    assert torch.equal(dense.blocked_linear(x, weight, bias), F.linear(x, weight, bias))


needs_onednn = pytest.mark.skipif(not dense.onednn_available(), reason="this torch has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("rows", [2, 7, 32, 300])
@pytest.mark.parametrize(
    ("out_features", "in_features"), [(960, 576), (3072, 576), (576, 1536), (49152, 576)]
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_onednn_equals_f_linear_to_fp32_rounding(
    rows: int, out_features: int, in_features: int, with_bias: bool
) -> None:
    """The same fp32 product summed in another order. Each element is within the error bound of an
    fp32 sum of its terms in any order (gamma_n |x| |w|^T, n terms, unit roundoff 2^-24); and the
    largest error within 32x `F.linear`'s (measured: up to 4x on an AMD Zen 4, up to 8.5x at 2-7
    rows on an Intel Sapphire Rapids), where a product on reduced-precision inputs (TF32: 2^-11,
    bf16: 2^-8) would be hundreds to thousands of times off."""
    generator = torch.Generator().manual_seed(rows * out_features + in_features)
    x = torch.randn(rows, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator) if with_bias else None
    assert dense.ONEDNN in dense.candidate_forms(weight)
    exact = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    plain_error = (F.linear(x, weight, bias) - exact).abs().max().item()
    onednn = dense.onednn_linear(x, weight, bias)
    assert onednn.dtype == torch.float32 and onednn.shape == (rows, out_features)
    terms = in_features + (bias is not None)
    gamma = terms * 2.0**-24 / (1 - terms * 2.0**-24)
    absolute_bias = None if bias is None else bias.double().abs()
    magnitude = F.linear(x.double().abs(), weight.double().abs(), absolute_bias)  # sum of |terms|
    error = (onednn - exact).abs()
    assert bool((error <= gamma * magnitude).all())
    assert error.max().item() <= 32 * plain_error


def test_linear_runs_the_form_the_plan_names(restore_plan: None) -> None:
    x, weight = torch.randn(32, 96), torch.randn(3000, 96)
    assert dense.form_of(x, weight, dense.MatmulPlan()) == dense.PLAIN  # nothing measured
    plan = dense.MatmulPlan({(3000, 96, dense.row_class(32)): dense.BLOCKS})
    assert dense.form_of(x, weight, plan) == dense.BLOCKS
    assert dense.form_of(x[:8], weight, plan) == dense.PLAIN  # another row class
    assert dense.form_of(x, torch.randn(3000, 97), plan) == dense.PLAIN  # another shape
    dense.set_plan(plan)
    assert dense.form_of(x, weight) == dense.BLOCKS
    assert torch.equal(dense.linear(x, weight), F.linear(x, weight))


@needs_onednn
def test_linear_runs_onednn_where_the_plan_names_it(restore_plan: None) -> None:
    x, weight = torch.randn(32, 200), torch.randn(3000, 200)  # 600 000 elements: a candidate
    dense.set_plan(dense.MatmulPlan({(3000, 200, dense.row_class(32)): dense.ONEDNN}))
    assert dense.form_of(x, weight) == dense.ONEDNN
    assert dense.form_of(x[:8], weight) == dense.PLAIN
    torch.testing.assert_close(dense.linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-4)
    dense.set_plan(dense.MatmulPlan({(3000, 200, dense.row_class(1)): dense.ONEDNN}))
    assert dense.form_of(x[:1], weight) == dense.ONEDNN  # one stream's decode: a matrix-vector product


def test_a_plan_names_only_forms_its_shapes_can_take() -> None:
    """Checked when the plan is made, so that `linear` need not check on every call."""
    class_of = dense.row_class
    for bad in ({(3000, 100, class_of(32)): dense.ONEDNN},  # 300 000 elements: below oneDNN's floor
                {(1000, 96, class_of(32)): dense.BLOCKS},  # one block wide
                {(3000, 96, class_of(1)): dense.BLOCKS},  # one row: a matrix-vector product
                {(3000, 96, class_of(32)): dense.PLAIN}):  # plain is the absence of an entry
        with pytest.raises(ValueError, match="cannot run in form"):
            dense.MatmulPlan(bad)


def test_strided_input_and_weight_view() -> None:
    """The layers pass views: a reshaped attention output, a weight slice of a fused layer."""
    x = torch.randn(96, 40).t()  # [40, 96], not contiguous
    fused = torch.randn(5000, 96)
    weight = fused[1000:4500]
    assert torch.equal(dense.blocked_linear(x, weight), F.linear(x, weight))
    if dense.onednn_available():
        torch.testing.assert_close(dense.onednn_linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("x", "weight"),
    [
        (torch.randn(8, 64), torch.randn(dense.COLUMN_BLOCK, 64)),  # one block, below oneDNN's size
        (torch.randn(1, 64), torch.randn(4096, 64)),  # one row: no blocks (and too small for oneDNN)
        (torch.randn(8, 600, dtype=torch.bfloat16), torch.randn(4096, 600, dtype=torch.bfloat16)),
        (torch.randn(2, 8, 64), torch.randn(4096, 64)),  # not a flat batch
    ],
)
def test_other_cases_are_f_linear_whatever_the_plan(x: torch.Tensor, weight: torch.Tensor) -> None:
    for form in (dense.BLOCKS, dense.ONEDNN):
        everything = dense.MatmulPlan({
            (weight.shape[0], weight.shape[-1], c): form for c, rows in enumerate(dense.ROW_CLASSES)
            if dense.shape_takes(form, weight.shape[0], weight.shape[-1], rows)
        })
        assert dense.form_of(x, weight, everything) == dense.PLAIN


def test_blocks_cover_every_column_once() -> None:
    for total in (1025, 2048, 2049, 151936):
        blocks = dense.column_blocks(total)
        assert blocks[0][0] == 0 and blocks[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        widths = [hi - lo for lo, hi in blocks]
        assert all(lo % dense.BLOCK_ALIGN == 0 for lo, _ in blocks)
        assert max(widths) <= dense.COLUMN_BLOCK + dense.BLOCK_ALIGN
        assert min(widths) >= dense.COLUMN_BLOCK // 2


FORM_OF_CALL = {F.linear: dense.PLAIN, dense.blocked_linear: dense.BLOCKS, dense.onednn_linear: dense.ONEDNN}


@needs_onednn
def test_measure_plan_keeps_another_form_only_where_it_wins_by_the_margin() -> None:
    """A scripted clock: blocks 10 % faster for 3000x64 at 8 rows and 1 % faster (under the margin)
    for 2000x32 everywhere; oneDNN 20 % faster for 1024x512 at 32 rows and 2 % at 8 and 256; every
    other form slower. Duplicates are timed once; small and bf16 weights never; each weight only in
    the forms it can take (3000x64: blocks, from 2 rows; 1024x512, one block wide: oneDNN; 2048x512:
    both), so at one row only the oneDNN candidates are timed."""
    timed: list[tuple[str, tuple[int, ...], int]] = []

    def clock(call: functools.partial[torch.Tensor], repeats: int) -> float:
        x, weight = call.args
        form, shape, rows = FORM_OF_CALL[call.func], tuple(weight.shape), x.shape[0]
        timed.append((form, shape, rows))
        scripted = {(dense.BLOCKS, (3000, 64), 8): 0.9, (dense.ONEDNN, (1024, 512), 32): 0.8,
                    (dense.ONEDNN, (1024, 512), 8): 0.98, (dense.ONEDNN, (1024, 512), 256): 0.98}
        if form == dense.PLAIN:
            return 1.0
        if form == dense.BLOCKS and shape == (2000, 32):
            return 0.99
        return scripted.get((form, shape, rows), 1.2)

    weights = [torch.empty(3000, 64), torch.empty(3000, 64), torch.empty(500, 64),
               torch.empty(3000, 64, dtype=torch.bfloat16), torch.empty(2000, 32),
               torch.empty(1024, 512), torch.empty(2048, 512)]
    found = dense.measure_plan(weights, clock=clock, budget_s=float("inf"))
    assert found.plan == dense.MatmulPlan({(3000, 64, 1): dense.BLOCKS, (1024, 512, 2): dense.ONEDNN})
    shapes = [(1024, 512), (2000, 32), (2048, 512), (3000, 64)]
    assert [(t.out_features, t.in_features, t.rows) for t in found.timings] == [  # decode sizes first
        (1024, 512, 1), (2048, 512, 1), *((*shape, rows) for rows in (8, 32, 256) for shape in shapes)
    ]
    assert found.unmeasured == []
    calls_per_round = (2 + 2) + 3 * (2 + 2 + 3 + 2)  # forms timed: at one row, then at each larger class
    assert len(timed) == calls_per_round * dense.TUNE_ROUNDS
    assert {(form, shape) for form, shape, _ in timed} == {
        (dense.PLAIN, shape) for shape in shapes
    } | {(dense.BLOCKS, (2000, 32)), (dense.BLOCKS, (2048, 512)), (dense.BLOCKS, (3000, 64)),
         (dense.ONEDNN, (1024, 512)), (dense.ONEDNN, (2048, 512))}
    [timing] = [t for t in found.timings if (t.out_features, t.in_features, t.rows) == (1024, 512, 32)]
    assert timing.chosen == dense.ONEDNN and timing.speedup == pytest.approx(1.25)


def test_measure_plan_stops_timing_at_its_budget_and_leaves_the_rest_plain() -> None:
    """A clock that says the blocks take 0.5 s a call and `F.linear` 1 s: the first pair's timed
    calls (3 rounds x 2 forms x (repeats + 1 unmeasured) calls) exceed a 10 s budget at once.
    (Both weights are too small for oneDNN: blocks are their only other form.)"""
    def clock(call: functools.partial[torch.Tensor], repeats: int) -> float:
        return 0.5 if call.func is dense.blocked_linear else 1.0

    weights = [torch.empty(3000, 64), torch.empty(2000, 32)]
    found = dense.measure_plan(weights, clock=clock, budget_s=10.0)
    assert [(t.out_features, t.rows) for t in found.timings] == [(2000, 8)]
    assert found.plan == dense.MatmulPlan({(2000, 32, dense.row_class(8)): dense.BLOCKS})
    assert found.unmeasured == [
        (3000, 64, 8), (2000, 32, 32), (3000, 64, 32), (2000, 32, 256), (3000, 64, 256)
    ]


def test_engine_measures_the_plan_at_start_and_answers_the_same_under_any_plan(restore_plan: None) -> None:
    """The demo-size model's gate|up (2 x 704 = 1408 outputs) is the one weight wider than a block,
    and no weight reaches oneDNN's size: the plan can only name blocks, which change no bit."""
    said: list[str] = []
    engine = Engine.from_pretrained(tiny_model("mistral", "demo"), progress=said.append,
                                    max_loaded_adapters=0)
    [line] = [s for s in said if s.startswith("CPU matmul forms measured")]
    assert "1408x256@8" in line and "1408x256@256" in line and "1408x256@1 " not in line
    assert set(dense.current_plan().forms.values()) <= {dense.BLOCKS}
    assert {key[:2] for key in dense.current_plan().forms} <= {(1408, 256)}
    requests = _requests()
    answers = []
    with engine:
        blocks = dense.MatmulPlan({(1408, 256, c): dense.BLOCKS for c in range(1, len(dense.ROW_CLASSES))})
        for plan in (dense.MatmulPlan(), blocks):
            dense.set_plan(plan)
            answers.append([(r.tokens, r.prompt_tokens) for r in engine.generate(requests)])
    assert answers[0] == answers[1]  # ids and log-probs, prompt and generated, bit for bit


@needs_onednn
def test_engine_answers_under_onednn_everywhere_as_under_f_linear(
    restore_plan: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every base matmul of the demo model through oneDNN (its size floor lowered for the test):
    the same tokens, and log-probs equal to fp32 rounding."""
    monkeypatch.setattr(dense, "MIN_ONEDNN_ELEMENTS", 0)
    engine = Engine.from_pretrained(tiny_model("mistral", "demo"), progress=lambda _: None,
                                    max_loaded_adapters=0)
    model = engine.loop.runner.model
    everything = {(w.shape[0], w.shape[1], c): dense.ONEDNN
                  for w in model.dense_weights() for c in range(len(dense.ROW_CLASSES))}
    requests = _requests()
    answers = []
    with engine:
        for plan in (dense.MatmulPlan(), dense.MatmulPlan(everything)):
            dense.set_plan(plan)
            answers.append(engine.generate(requests))
    for plain, onednn in zip(*answers, strict=True):
        assert [t.id for t in onednn.tokens] == [t.id for t in plain.tokens]
        for got, expected in ((onednn.tokens, plain.tokens), (onednn.prompt_tokens, plain.prompt_tokens)):
            torch.testing.assert_close([t.logprob for t in got], [t.logprob for t in expected],
                                       rtol=0, atol=1e-4)


def _requests() -> list[GenerationRequest]:
    params = SamplingParams(max_new_tokens=6)
    return [GenerationRequest(prompt, params, decoder_input_details=True)
            for prompt in ("The adapter", "Many LoRAs on one base")]


def test_a_failing_onednn_only_loses_the_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build or CPU where oneDNN's op raises: the probe says so, and no weight is offered the form."""
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    dense.onednn_available.cache_clear()
    try:
        assert not dense.onednn_available()
        assert dense.candidate_forms(torch.empty(2048, 600)) == (dense.BLOCKS,)
    finally:
        monkeypatch.undo()
        dense.onednn_available.cache_clear()
