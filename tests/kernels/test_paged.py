"""`add_lora_paged` against the per-token paged reference, on both backends (torch and Triton).

Every case scatters the adapters' pages over a pool whose unused pages, and the rows past each
slot's rank inside its last page, hold NaN: a kernel that reads anything but a slot's true rank
rows returns NaN and fails.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lorafleet import kernels
from lorafleet.kernels import build_adapter_pages, prepare_lora_batch, reference

from tests.kernels.cases import assert_close_to_reference, forced_backend, make_paged_case, stacked_equivalent
from tests.kernels.conftest import DEVICE

MIXED = [4, 8, 16, 64, 12]  # in one batch; 4 and 12 are not multiples of the page's 8 rows
TOKENS = [3, 0, 2, 4, -1, 1, 3, 2, 0, 4, 4, -1, 1]
QKV = (24, 8, 8)


def test_paged_reference_equals_stacked_reference_on_the_same_adapters() -> None:
    case = make_paged_case(TOKENS, hidden_in=20, slice_widths=QKV, ranks=MIXED, dtype=torch.float32,
                           device=torch.device("cpu"), per_slice_scales=True)
    lora_a, lora_b = stacked_equivalent(case)
    stacked = reference.add_lora_sliced(case.out.clone(), case.x, lora_a, lora_b, case.token_lora,
                                        case.scales, case.slice_widths)
    torch.testing.assert_close(case.expected(), stacked, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_mixed_ranks_in_scattered_pages_match_reference(dtype: torch.dtype, backend: str, device) -> None:
    case = make_paged_case(TOKENS, hidden_in=36, slice_widths=QKV, ranks=MIXED, dtype=dtype, device=device,
                           per_slice_scales=True)
    assert case.pages.max_pages == 8 and case.pages.pages_used == 1 + 1 + 2 + 8 + 2  # no padding to rank 64
    actual = case.run()
    assert actual.dtype == dtype and not actual.isnan().any()
    assert_close_to_reference(actual, case.expected())
    untouched = case.token_lora < 0
    assert torch.equal(actual[untouched], case.out[untouched])


def test_consecutive_and_scattered_pages_give_the_same_result(backend: str, device) -> None:
    common = dict(hidden_in=24, slice_widths=(16,), ranks=[16, 24, 8], dtype=torch.float32, device=device,
                  seed=3)
    consecutive = make_paged_case([0, 1, 2, 1, 0], scattered=False, **common)
    scattered = make_paged_case([0, 1, 2, 1, 0], scattered=True, **common)
    assert consecutive.pages.first_page[1] >= 0 and scattered.pages.slot_pages != consecutive.pages.slot_pages
    torch.testing.assert_close(consecutive.run(), scattered.run(), atol=1e-6, rtol=1e-6)


def test_a_slot_re_placed_with_another_rank_uses_its_new_pages_only(backend: str, device) -> None:
    """Slot 1 goes from rank 16 in two pages to rank 8 in a third; its old pages keep stale rows."""
    case = make_paged_case([1, 0, 1, -1, 1], hidden_in=16, slice_widths=(12, 4), ranks=[8, 16],
                           dtype=torch.float32, device=device, spare_pages=2)
    meta = prepare_lora_batch(case.token_lora, num_slots=2)  # one batch serves both placements
    assert_close_to_reference(case.run(meta), case.expected())
    spare = sorted(set(range(case.a_pages.shape[0])) - {p for held in case.pages.slot_pages for p in held})[0]
    a_pages, b_pages = case.a_pages.clone(), case.b_pages.clone()
    a_pages[spare] = torch.randn(a_pages[spare].shape, generator=torch.Generator().manual_seed(1)).to(device)
    b_pages[spare] = torch.randn(b_pages[spare].shape, generator=torch.Generator().manual_seed(2)).to(device)
    pages = build_adapter_pages([case.pages.slot_pages[0], [spare]], [8, 8], max_pages=2, device=device)
    replaced = replace(case, a_pages=a_pages, b_pages=b_pages, pages=pages)
    actual = replaced.run(meta)
    assert_close_to_reference(actual, replaced.expected())
    assert not torch.allclose(actual, case.run(meta))


def test_tokens_on_empty_slots_are_left_bit_identical(backend: str, device) -> None:
    case = make_paged_case([1, 0, 2, 1, 0, 2], hidden_in=16, slice_widths=(8, 8), ranks=[8, 0, 16, 0],
                           dtype=torch.bfloat16, device=device)
    case.out[[0, 3]] = -0.0
    actual = case.run()
    assert torch.equal(actual[[0, 3]].view(torch.int16), case.out[[0, 3]].view(torch.int16))
    assert_close_to_reference(actual, case.expected())
    everyone_on_empty = make_paged_case([1, 3, 1], hidden_in=16, slice_widths=(8,), ranks=[8, 0, 16, 0],
                                        dtype=torch.float32, device=device)
    assert torch.equal(everyone_on_empty.run(), everyone_on_empty.out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_without_adapter_keep_negative_zero_and_nan_bit_for_bit(dtype: torch.dtype, backend: str,
                                                                   device) -> None:
    case = make_paged_case([0, -1, 1, -1, 2], hidden_in=16, slice_widths=(12,), ranks=[8, 20, 4], dtype=dtype,
                           device=device)
    case.out[1] = -0.0
    case.out[3, ::2] = float("nan")
    actual = case.run()
    as_int = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(actual[[1, 3]].view(as_int), case.out[[1, 3]].view(as_int))


def test_two_runs_are_bit_identical_and_rows_independent(backend: str, device) -> None:
    case = make_paged_case([1, 0, 2, 1, 1, 0], hidden_in=40, slice_widths=(24,), ranks=[8, 16, 12],
                           dtype=torch.float32, device=device)
    batched = case.run()
    assert torch.equal(batched, case.run())
    for t in (0, 2, 5):
        row = slice(t, t + 1)
        alone = kernels.add_lora_paged(case.out[row].clone(), case.x[row], case.a_pages, case.b_pages,
                                       case.token_lora[row], case.scales, pages=case.pages,
                                       slice_widths=case.slice_widths)
        torch.testing.assert_close(alone[0], batched[t], atol=1e-6, rtol=1e-6)


def test_batch_without_adapter_tokens_launches_nothing(backend: str, device,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from lorafleet.kernels import lora, torch_lora

    launched: list[str] = []
    for module in (lora, torch_lora):
        monkeypatch.setattr(module, "apply_paged", lambda *a, _m=module.__name__, **k: launched.append(_m))
    case = make_paged_case([-1, -1, -1], hidden_in=8, slice_widths=(8,), ranks=[8, 16], dtype=torch.float32,
                           device=device)
    out = case.out.clone()
    result = kernels.add_lora_paged(out, case.x, case.a_pages, case.b_pages, case.token_lora, case.scales,
                                    pages=case.pages, slice_widths=case.slice_widths)
    assert result is out and torch.equal(out, case.out) and launched == []


def test_prefill_sized_batch_over_pages_matches_reference(backend: str, device) -> None:
    token_lora = torch.randint(-1, 3, (280,), generator=torch.Generator().manual_seed(5))
    case = make_paged_case(token_lora, hidden_in=16, slice_widths=(16, 8), ranks=[64, 8, 20],
                           dtype=torch.float16, device=device)
    meta = prepare_lora_batch(case.token_lora, num_slots=3)
    assert meta.block_m == 64
    assert_close_to_reference(case.run(meta), case.expected())


@pytest.mark.parametrize("split_k", [1, 3], ids=lambda s: f"split_k{s}")
def test_triton_paged_kernels_give_the_reference_for_every_split_k(split_k: int, triton_backend: str,
                                                                   device) -> None:
    from lorafleet.kernels import lora

    case = make_paged_case([0, 1, 1, -1, 2, 3], hidden_in=150, slice_widths=(20, 12), ranks=[8, 16, 64, 4],
                           dtype=torch.float32, device=device, per_slice_scales=True)
    meta = prepare_lora_batch(case.token_lora, num_slots=4)
    actual = lora.apply_paged(case.out.clone(), case.x, case.a_pages, case.b_pages, case.scales,
                              case.slice_widths, meta, case.pages, split_k=split_k)
    assert_close_to_reference(actual, case.expected())


@st.composite
def paged_problems(draw: st.DrawFn) -> tuple:
    num_slots = draw(st.integers(1, 5))
    tokens = draw(st.lists(st.integers(-1, num_slots - 1), min_size=1, max_size=24))
    rank = st.sampled_from([0, 1, 4, 8, 12, 16, 33, 64])
    ranks = draw(st.lists(rank, min_size=num_slots, max_size=num_slots))
    widths = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return tokens, draw(st.integers(1, 64)), widths, ranks, dtype, draw(st.booleans()), draw(st.booleans())


def _check(problem: tuple, seed: int) -> None:
    tokens, hidden_in, widths, ranks, dtype, per_slice, scattered = problem
    case = make_paged_case(tokens, hidden_in=hidden_in, slice_widths=widths, ranks=ranks, dtype=dtype,
                           device=DEVICE, per_slice_scales=per_slice, scattered=scattered, seed=seed)
    actual = case.run()
    assert_close_to_reference(actual, case.expected())
    untouched = case.token_lora < 0
    assert torch.equal(actual[untouched], case.out[untouched])


@settings(max_examples=12, deadline=None)
@given(problem=paged_problems(), seed=st.integers(0, 2**16))
def test_torch_paged_path_matches_reference_on_random_problems(problem: tuple, seed: int) -> None:
    with forced_backend("torch"):
        _check(problem, seed)


@settings(max_examples=5, deadline=None)
@given(problem=paged_problems(), seed=st.integers(0, 2**16))
def test_triton_paged_path_matches_reference_on_random_problems(problem: tuple, seed: int) -> None:
    with forced_backend("triton"):
        _check(problem, seed)
