"""The CPU path's two forms (grouped per adapter, gathered per token) and the rule between them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lorafleet import kernels
from lorafleet.kernels import prepare_lora_batch, reference, torch_lora

from tests.kernels.cases import assert_close_to_reference, make_case
from tests.kernels.test_properties import problems

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
WIDTHS = (24, 8, 8)  # q | k | v with GQA-narrow k and v


def _forced(case, path: str, *, meta=None) -> torch.Tensor:
    """Runs one form of the torch path directly on a copy of case.out."""
    num_slots = case.lora_a.shape[0]
    meta = meta or prepare_lora_batch(case.token_lora, num_slots)
    scales = case.scales if case.scales.dim() == 2 else case.scales.expand(len(case.slice_widths), -1)
    return torch_lora.apply(
        case.out.clone(), case.x, case.lora_a, case.lora_b, scales, tuple(case.slice_widths), meta, path=path
    )


def _expected(case) -> torch.Tensor:
    return reference.add_lora_sliced(case.out.clone(), case.x, case.lora_a, case.lora_b, case.token_lora,
                                     case.scales, case.slice_widths)


DEMO_QKV = 3 * 8 * 256 + 512 * 8  # E of the demo model's fused q|k|v at rank 8
LARGE_QKV = 3 * 16 * 4096 + 6144 * 16  # E of a 7B-size q|k|v at rank 16


@pytest.mark.parametrize(
    ("tokens", "slots", "elements", "path"),
    [
        (32, 32, DEMO_QKV, "gathered"),  # decode: one token per adapter
        (128, 32, 1024, "gathered"),  # four per adapter: the edge of the rule
        (129, 32, 1024, "grouped"),  # just past it
        (8, 1, DEMO_QKV, "grouped"),  # one adapter: nothing to save by gathering
        (1, 1, DEMO_QKV, "grouped"),
        (2, 2, DEMO_QKV, "gathered"),
        (300, 3, DEMO_QKV, "grouped"),  # prefill: many tokens per adapter
        (32, 32, 2**16, "gathered"),  # the edge of the bound on the weights copied per token
        (32, 32, 2**16 + 1, "grouped"),
        (2, 2, LARGE_QKV, "grouped"),  # large weights: copying them per token costs more
    ],
)
def test_rule_gathers_only_for_many_adapters_with_few_tokens_and_small_weights(
    tokens: int, slots: int, elements: int, path: str
) -> None:
    assert torch_lora.choose_path(tokens, slots, elements) == path


def test_elements_per_token_counts_every_slice_of_a_and_b() -> None:
    lora_a, lora_b = torch.zeros(5, 3, 8, 256), torch.zeros(5, 512, 8)
    assert torch_lora.elements_per_token(lora_a, lora_b) == DEMO_QKV


@pytest.mark.parametrize("path", torch_lora.PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "pattern",
    [[3, 0, 2, 1], [0, -1, 2, -1, 1, 1, -1, 3], [2] * 7, [1], [-1, 0]],
    ids=["one_per_adapter", "some_without_adapter", "one_adapter", "one_token", "first_row_without"],
)
def test_each_form_matches_reference_with_per_slice_scales(pattern: list[int], dtype: torch.dtype,
                                                           path: str) -> None:
    case = make_case(pattern, hidden_in=40, slice_widths=WIDTHS, ranks=[8, 16, 64, 4], dtype=dtype,
                     device=torch.device("cpu"), per_slice_scales=True, seed=len(pattern))
    actual = _forced(case, path)
    assert_close_to_reference(actual, _expected(case))
    untouched = case.token_lora < 0
    assert torch.equal(actual[untouched], case.out[untouched])


@pytest.mark.parametrize("path", torch_lora.PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_without_adapter_keep_negative_zero_and_nan_bit_for_bit(dtype: torch.dtype, path: str) -> None:
    case = make_case([0, -1, 1, -1, 2], hidden_in=16, slice_widths=(12,), ranks=[8, 8, 8], dtype=dtype,
                     device=torch.device("cpu"))
    case.out[1] = -0.0  # -0.0 + 0.0 would round to +0.0: the row must not be added to at all
    case.out[3, ::2] = float("nan")
    actual = _forced(case, path)
    before, after = case.out[[1, 3]], actual[[1, 3]]
    assert torch.equal(before.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       after.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.parametrize("all_active", [True, False], ids=["all_rows_active", "some_rows_without_adapter"])
def test_gathered_form_cut_into_token_chunks_matches_reference(all_active: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    token_lora = order if all_active else torch.where(order % 4 == 0, -1, order)
    case = make_case(token_lora, hidden_in=20, slice_widths=(10, 6), ranks=[8] * 12, dtype=torch.bfloat16,
                     device=torch.device("cpu"), per_slice_scales=True)
    per_token = 2 * 8 * 20 + 16 * 8
    monkeypatch.setattr(torch_lora, "GATHER_CHUNK_ELEMENTS", 5 * per_token)  # chunks of 5, 5 and 2 tokens
    actual = _forced(case, "gathered")
    assert_close_to_reference(actual, _expected(case))
    assert torch.equal(actual[case.token_lora < 0], case.out[case.token_lora < 0])


def test_both_forms_agree_to_fp32_rounding_on_a_decode_batch() -> None:
    order = torch.randperm(16, generator=torch.Generator().manual_seed(4))
    token_lora = torch.cat([order, torch.tensor([5, -1])])  # 16 adapters, one twice, one row without
    case = make_case(token_lora, hidden_in=64, slice_widths=(32, 16, 16), ranks=[16] * 16,
                     dtype=torch.float32, device=torch.device("cpu"), per_slice_scales=True)
    torch.testing.assert_close(_forced(case, "gathered"), _forced(case, "grouped"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("pattern", "path"),
    [([3, 0, 2, 1, -1], "gathered"), ([0] * 5 + [1] * 4 + [-1], "grouped"), ([2] * 4, "grouped")],
)
def test_public_call_runs_the_form_the_rule_chooses(pattern: list[int], path: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_KERNELS", "torch")
    ran: list[str] = []
    for name, form in (("grouped", torch_lora._grouped), ("gathered", torch_lora._gathered)):
        def spy(*args, _form=form, _name=name):  # records which form ran, then runs it for real
            ran.append(_name)
            return _form(*args)
        monkeypatch.setattr(torch_lora, f"_{name}", spy)
    case = make_case(pattern, hidden_in=24, slice_widths=(16,), ranks=[8, 8, 16, 8], dtype=torch.float16,
                     device=torch.device("cpu"))
    meta = prepare_lora_batch(case.token_lora, num_slots=4)
    actual = kernels.add_lora(*case.single, meta=meta)
    assert ran == [path]
    assert_close_to_reference(actual, reference.add_lora(*case.single))


def test_metadata_counts_active_tokens_and_distinct_adapters_at_its_one_sync() -> None:
    meta = prepare_lora_batch(torch.tensor([2, -1, 0, 2, -1, 5]), num_slots=6)
    assert (meta.num_active_tokens, meta.num_active_slots) == (4, 3)
    unvalidated = prepare_lora_batch(torch.tensor([2, -1, 0]), num_slots=6, validate=False)
    assert (unvalidated.num_active_tokens, unvalidated.num_active_slots) == (None, None)


@pytest.mark.parametrize("path", [None, *torch_lora.PATHS])
def test_unvalidated_metadata_counts_on_the_fly_and_gives_the_reference_result(path: str | None) -> None:
    case = make_case([1, -1, 0, 3, 2], hidden_in=16, slice_widths=(8, 8), ranks=[4, 8, 8, 16],
                     dtype=torch.float32, device=torch.device("cpu"), per_slice_scales=True)
    meta = prepare_lora_batch(case.token_lora, num_slots=4, validate=False)
    assert_close_to_reference(_forced(case, path, meta=meta), _expected(case))


def test_unknown_path_name_is_rejected() -> None:
    case = make_case([0], hidden_in=4, slice_widths=(4,), ranks=[2], dtype=torch.float32,
                     device=torch.device("cpu"))
    with pytest.raises(ValueError, match="path must be one of"):
        _forced(case, "scatter")


@settings(max_examples=10, deadline=None)
@given(problem=problems(), seed=st.integers(0, 2**16), path=st.sampled_from(torch_lora.PATHS))
def test_each_form_matches_reference_on_random_problems(problem: tuple, seed: int, path: str) -> None:
    token_lora, hidden_in, widths, ranks, dtype, per_slice = problem
    case = make_case(token_lora, hidden_in=hidden_in, slice_widths=widths, ranks=ranks, dtype=dtype,
                     device=torch.device("cpu"), per_slice_scales=per_slice, seed=seed)
    actual = _forced(case, path)
    assert_close_to_reference(actual, _expected(case))
    assert torch.equal(actual[case.token_lora < 0], case.out[case.token_lora < 0])
