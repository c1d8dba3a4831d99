"""The CPU gathered form reading weights in place (row layout, fp32) and its side of the rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lorafleet import kernels
from lorafleet.kernels import prepare_lora_batch, reference, torch_lora

from tests.kernels.cases import LoraCase, assert_close_to_reference, make_case
from tests.kernels.test_properties import problems

CPU = torch.device("cpu")
DEMO_QKV = 3 * 8 * 256 + 512 * 8
LARGE_QKV = 3 * 16 * 4096 + 6144 * 16


def _row_layout(case: LoraCase) -> LoraCase:
    """The same weights stored A [L, K, S, R] and B [L, R, N], passed as [L, S, R, K] / [L, N, R] views."""
    lora_a = case.lora_a.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    lora_b = case.lora_b.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(lora_a, case.lora_a) and torch.equal(lora_b, case.lora_b)
    return replace(case, lora_a=lora_a, lora_b=lora_b)


def _run(case: LoraCase, path: str | None, meta: kernels.LoraBatch | None = None) -> torch.Tensor:
    meta = meta or prepare_lora_batch(case.token_lora, case.lora_a.shape[0])
    scales = case.scales if case.scales.dim() == 2 else case.scales.expand(len(case.slice_widths), -1)
    return torch_lora.apply(case.out.clone(), case.x, case.lora_a, case.lora_b, scales,
                            tuple(case.slice_widths), meta, path=path)


def _expected(case: LoraCase) -> torch.Tensor:
    return reference.add_lora_sliced(case.out.clone(), case.x, case.lora_a, case.lora_b, case.token_lora,
                                     case.scales, case.slice_widths)


def _spy_forms(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    for name in ("_bagged_delta", "_gathered_delta"):
        form = getattr(torch_lora, name)

        def spy(*args, _form=form, _name=name):  # records which implementation ran, then runs it
            ran.append(_name)
            return _form(*args)

        monkeypatch.setattr(torch_lora, name, spy)
    return ran


def test_row_layout_is_recognised_from_strides_only() -> None:
    a, b = torch.zeros(4, 3, 8, 16), torch.zeros(4, 40, 8)
    assert not torch_lora.is_row_layout(a, b)
    assert torch_lora.is_row_layout(a.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),
                                    b.transpose(1, 2).contiguous().transpose(1, 2))


@pytest.mark.parametrize(
    "pattern",
    [[3, 0, 2, 1], [0, -1, 2, -1, 1, 1, -1, 3], [2] * 7, [1], [-1, 0]],
    ids=["one_per_adapter", "some_without_adapter", "one_adapter", "one_token", "first_row_without"],
)
@pytest.mark.parametrize("widths", [(24, 8, 8), (12,), (10, 6)], ids=["qkv", "single", "gate_up"])
def test_in_place_form_matches_reference_with_padded_ranks_and_per_slice_scales(
    pattern: list[int], widths: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _spy_forms(monkeypatch)
    case = _row_layout(make_case(pattern, hidden_in=40, slice_widths=widths, ranks=[8, 16, 64, 4],
                                 dtype=torch.float32, device=CPU, per_slice_scales=True, seed=len(pattern)))
    actual = _run(case, "gathered")
    assert set(ran) == {"_bagged_delta"}
    assert_close_to_reference(actual, _expected(case))
    untouched = case.token_lora < 0
    assert torch.equal(actual[untouched], case.out[untouched])


def test_in_place_form_leaves_negative_zero_and_nan_rows_bit_for_bit() -> None:
    case = _row_layout(make_case([0, -1, 1, -1, 2], hidden_in=16, slice_widths=(8, 4), ranks=[8, 8, 8],
                                 dtype=torch.float32, device=CPU))
    case.out[1] = -0.0
    case.out[3, ::2] = float("nan")
    actual = _run(case, "gathered")
    assert torch.equal(actual[[1, 3]].view(torch.int32), case.out[[1, 3]].view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_in_row_layout_falls_back_to_copied_form(dtype: torch.dtype,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _spy_forms(monkeypatch)
    case = _row_layout(make_case([2, 0, -1, 1], hidden_in=24, slice_widths=(16, 8), ranks=[8, 8, 8],
                                 dtype=dtype, device=CPU, per_slice_scales=True))
    actual = _run(case, "gathered")
    assert set(ran) == {"_gathered_delta"}  # fp32 accumulation needs fp32 weights for embedding_bag
    assert_close_to_reference(actual, _expected(case))


@pytest.mark.parametrize("all_active", [True, False], ids=["all_rows_active", "some_rows_without_adapter"])
def test_in_place_form_cut_into_token_chunks_matches_reference(all_active: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    token_lora = order if all_active else torch.where(order % 4 == 0, -1, order)
    case = _row_layout(make_case(token_lora, hidden_in=20, slice_widths=(10, 6), ranks=[8] * 12,
                                 dtype=torch.float32, device=CPU, per_slice_scales=True))
    monkeypatch.setattr(torch_lora, "GATHER_CHUNK_ELEMENTS", 5 * (2 * 8 * 20 + 16 * 8))  # chunks of 5, 5, 2
    actual = _run(case, "gathered")
    assert_close_to_reference(actual, _expected(case))
    assert torch.equal(actual[case.token_lora < 0], case.out[case.token_lora < 0])


def test_one_batch_metadata_serves_layers_of_different_shapes() -> None:
    """Bag indices are cached per batch by shape: a q|k|v layer then an o layer of another K."""
    token_lora = torch.tensor([3, 1, -1, 0, 2, 1])
    meta = prepare_lora_batch(token_lora, num_slots=4)
    for hidden_in, widths in [(32, (16, 8, 8)), (16, (32,)), (32, (16, 8, 8))]:
        case = _row_layout(make_case(token_lora, hidden_in=hidden_in, slice_widths=widths, ranks=[8, 4, 8, 2],
                                     dtype=torch.float32, device=CPU, per_slice_scales=True, seed=hidden_in))
        assert_close_to_reference(_run(case, "gathered", meta=meta), _expected(case))


def test_unvalidated_metadata_works_in_place() -> None:
    case = _row_layout(make_case([1, -1, 0, 3, 2], hidden_in=16, slice_widths=(8, 8), ranks=[4, 8, 8, 16],
                                 dtype=torch.float32, device=CPU, per_slice_scales=True))
    meta = prepare_lora_batch(case.token_lora, num_slots=4, validate=False)
    assert_close_to_reference(_run(case, None, meta=meta), _expected(case))


@pytest.mark.parametrize(
    ("tokens", "slots", "elements", "path"),
    [
        (32, 32, DEMO_QKV, "gathered"),
        (32, 1, DEMO_QKV, "gathered"),  # one adapter, decode: grouped's per-op costs dominate
        (256, 1, DEMO_QKV, "gathered"),
        (257, 1, DEMO_QKV, "grouped"),  # one adapter, prefill
        (512, 32, DEMO_QKV, "gathered"),  # 16 tokens per adapter
        (513, 32, DEMO_QKV, "grouped"),
        (32, 32, LARGE_QKV, "gathered"),  # large weights: one or two tokens per adapter only
        (64, 32, LARGE_QKV, "gathered"),
        (65, 32, LARGE_QKV, "grouped"),
        (32, 1, LARGE_QKV, "grouped"),
    ],
)
def test_in_place_rule_gathers_up_to_many_more_tokens_per_adapter(tokens: int, slots: int, elements: int,
                                                                   path: str) -> None:
    assert torch_lora.choose_path(tokens, slots, elements, in_place=True) == path


def test_public_call_on_row_layout_reads_in_place_for_a_decode_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_KERNELS", "torch")
    ran = _spy_forms(monkeypatch)
    case = _row_layout(make_case([3, 0, 2, 1, -1], hidden_in=24, slice_widths=(16, 8, 8), ranks=[8] * 4,
                                 dtype=torch.float32, device=CPU, per_slice_scales=True))
    actual = kernels.add_lora_sliced(case.out.clone(), case.x, case.lora_a, case.lora_b, case.token_lora,
                                     case.scales, slice_widths=case.slice_widths)
    assert ran == ["_bagged_delta"]
    assert_close_to_reference(actual, _expected(case))


def test_derived_values_are_built_once_per_batch() -> None:
    meta = prepare_lora_batch(torch.tensor([1, 0]), num_slots=2)
    calls: list[int] = []
    first = meta.derived(("k",), lambda: calls.append(1) or torch.zeros(1))
    assert meta.derived(("k",), lambda: calls.append(2) or torch.ones(1)) is first
    assert calls == [1]


@settings(max_examples=10, deadline=None)
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_in_place_form_matches_reference_on_random_problems(problem: tuple, seed: int) -> None:
    token_lora, hidden_in, widths, ranks, _, per_slice = problem
    case = _row_layout(make_case(token_lora, hidden_in=hidden_in, slice_widths=widths, ranks=ranks,
                                 dtype=torch.float32, device=CPU, per_slice_scales=per_slice, seed=seed))
    actual = _run(case, "gathered")
    assert_close_to_reference(actual, _expected(case))
    assert torch.equal(actual[case.token_lora < 0], case.out[case.token_lora < 0])
