"""The CPU path's planned grouped form: each slot's pages copied once into whole matrices."""

from __future__ import annotations

import pytest
import torch
from lorafleet.kernels import build_adapter_pages, prepare_lora_batch, torch_lora, torch_slot_weights
from lorafleet.kernels.torch_slot_weights import SlotWeights

from tests.kernels.cases import PagedCase, assert_close_to_reference, make_paged_case

CPU = torch.device("cpu")
RANKS = [4, 8, 16, 64, 13, 0]  # 1, 1, 2, 8 and 2 pages; slot 5 is empty


def _run(case: PagedCase, weights: SlotWeights | None, path: str | None = "grouped",
         scales: torch.Tensor | None = None) -> torch.Tensor:
    meta = prepare_lora_batch(case.token_lora, case.pages.num_slots)
    scales = case.scales if scales is None else scales
    return torch_lora.apply_paged(case.out.clone(), case.x, case.a_pages, case.b_pages, scales,
                                  case.slice_widths, meta, case.pages, path=path, slot_weights=weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("row_layout", [True, False], ids=["rows", "api"])
@pytest.mark.parametrize("pattern", [
    [0, 0, 1, 2, 2, 3, 3, 3, 4, -1, -1],  # grouped by slot, as the engine orders rows
    [3, -1, 0, 5, 2, 1, 3, 4, -1, 0, 2],  # any order, with rows on the base and on an empty slot
], ids=["rows_by_slot", "any_order"])
def test_planned_form_matches_the_reference_and_leaves_other_rows_untouched(
    pattern: list[int], row_layout: bool, dtype: torch.dtype
) -> None:
    case = make_paged_case(pattern, hidden_in=40, slice_widths=(24, 8, 8), ranks=RANKS, dtype=dtype,
                           device=CPU, per_slice_scales=True, row_layout=row_layout, seed=len(pattern))
    weights = SlotWeights()
    actual = _run(case, weights)
    assert not actual.isnan().any()  # no page row past a slot's rank, nor a spare page, was read
    assert_close_to_reference(actual, case.expected())
    untouched = (case.token_lora < 0) | (case.token_lora == 5)
    assert torch.equal(actual[untouched], case.out[untouched])
    # one copy per live slot, of its true rank rows only, in fp32
    live = {slot for slot in pattern if slot >= 0 and RANKS[slot] > 0}
    k, n = 40, 40
    assert weights.nbytes == sum(RANKS[slot] * (3 * k + n) * 4 for slot in live)


def test_copies_are_kept_for_their_placement_and_dropped_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    case = make_paged_case([0, 1, 1, 2], hidden_in=16, slice_widths=(8, 8), ranks=[8, 16, 4],
                           dtype=torch.float32, device=CPU, per_slice_scales=True, row_layout=True)
    weights = SlotWeights()
    copies: list[int] = []
    original = torch_slot_weights._copy_slot

    def counting(a, b, pages, slot, offsets):  # type: ignore[no-untyped-def]
        copies.append(slot)
        return original(a, b, pages, slot, offsets)

    monkeypatch.setattr(torch_slot_weights, "_copy_slot", counting)
    first = _run(case, weights)
    again = _run(case, weights)
    assert sorted(copies) == [0, 1, 2]  # the second step reused every copy
    assert torch.equal(first, again)

    # The engine writes another adapter into slot 1's pages and places it: a new placement object.
    # The copies of the old one must not serve it, even with the same slots and pages.
    for page in case.pages.slot_pages[1]:
        case.a_pages[page].mul_(-1.0)
    moved = PagedCase(case.out, case.x, case.a_pages, case.b_pages, case.token_lora, case.scales,
                      build_adapter_pages(case.pages.slot_pages, case.pages.slot_ranks,
                                          max_pages=case.pages.max_pages),
                      case.slice_widths)
    after = _run(moved, weights)
    assert sorted(copies) == [0, 0, 1, 1, 2, 2]
    assert_close_to_reference(after, moved.expected())
    assert not torch.allclose(after[1:3], first[1:3])


def test_a_slice_with_scale_zero_is_left_as_it_was() -> None:
    case = make_paged_case([0, 0, 1], hidden_in=16, slice_widths=(8, 4, 4), ranks=[8, 16],
                           dtype=torch.float32, device=CPU, per_slice_scales=True, row_layout=True)
    scales = case.scales.clone()
    scales[1] = 0.0  # no adapter targets the middle slice (the engine zeroes such a slice's scale)
    case.out[:, 8:12] = -0.0
    actual = _run(case, SlotWeights(), scales=scales)
    assert torch.equal(actual[:, 8:12], case.out[:, 8:12])
    assert torch.equal(torch.signbit(actual[:, 8:12]), torch.ones(3, 4, dtype=torch.bool))
    expected = PagedCase(case.out, case.x, case.a_pages, case.b_pages, case.token_lora, scales, case.pages,
                         case.slice_widths).expected()
    assert_close_to_reference(actual, expected)


@pytest.mark.parametrize(("tokens", "slots", "elements", "slices", "path"), [
    (16, 2, 32_000, 3, "grouped"),  # issue 18's mixed decode, q|k|v: 8 rows on each of 2 adapters
    (16, 2, 46_000, 1, "grouped"),  # ... o_proj
    (32, 8, 10_240, 3, "gathered"),  # the demo's q|k|v, 4 rows per adapter: weights in cache
    (32, 1, 10_240, 3, "grouped"),  # one adapter
    (32, 32, 294_912, 3, "gathered"),  # 7B q|k|v, one row per adapter
    (64, 32, 294_912, 3, "grouped"),  # ... two rows each: reading weights per token costs more
    (512, 2, 40_000, 2, "grouped"),  # prefill
])
def test_rule_with_slot_weights(tokens: int, slots: int, elements: int, slices: int, path: str) -> None:
    chosen = torch_lora.choose_path(tokens, slots, elements, in_place=True, planned=True, num_slices=slices)
    assert chosen == path
    # the copied gathered form (bf16, or the kernels' layout) keeps its own rule
    copied = torch_lora.choose_path(tokens, slots, elements, planned=True, num_slices=slices)
    assert copied == torch_lora.choose_path(tokens, slots, elements)


def test_the_rule_picks_the_planned_form_when_slot_weights_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    for name in ("_grouped", "_planned", "_bagged_delta"):
        form = getattr(torch_lora, name)

        def spy(*args, _form=form, _name=name):  # type: ignore[no-untyped-def]
            ran.append(_name)
            return _form(*args)

        monkeypatch.setattr(torch_lora, name, spy)
    # 24 rows on one rank-64 adapter: 3 ops planned, against ~6.5 units for reading its weights per row
    case = make_paged_case([0] * 24, hidden_in=32, slice_widths=(16, 16), ranks=[64], dtype=torch.float32,
                           device=CPU, per_slice_scales=True, row_layout=True)
    _run(case, SlotWeights(), path=None)
    _run(case, None, path=None)
    assert ran == ["_planned", "_bagged_delta"]
