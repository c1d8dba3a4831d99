"""The CPU path on pages: each form (grouped, gathered in place, gathered copied) and its rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import build_adapter_pages, prepare_lora_batch, torch_lora
from lorafleet.kernels.torch_live import live_tokens

from tests.kernels.cases import PagedCase, assert_close_to_reference, make_paged_case

CPU = torch.device("cpu")
MIXED = [4, 8, 16, 64, 12, 0]  # slot 5 is empty


def _run(case: PagedCase, path: str | None, meta: kernels.LoraBatch | None = None) -> torch.Tensor:
    meta = meta or prepare_lora_batch(case.token_lora, case.pages.num_slots)
    scales = case.scales if case.scales.dim() == 2 else case.scales.expand(len(case.slice_widths), -1)
    return torch_lora.apply_paged(case.out.clone(), case.x, case.a_pages, case.b_pages, scales,
                                  case.slice_widths, meta, case.pages, path=path)


def _spy_forms(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    for name in ("_grouped", "_bagged_delta", "_gathered_delta"):
        form = getattr(torch_lora, name)

        def spy(*args, _form=form, _name=name):  # records which implementation ran, then runs it
            ran.append(_name)
            return _form(*args)

        monkeypatch.setattr(torch_lora, name, spy)
    return ran


FORMS = {  # (path, row layout, dtype) -> the implementation that must run
    ("grouped", False, torch.float32): "_grouped",
    ("grouped", True, torch.bfloat16): "_grouped",
    ("gathered", True, torch.float32): "_bagged_delta",
    ("gathered", False, torch.float32): "_gathered_delta",
    ("gathered", True, torch.float16): "_gathered_delta",  # embedding_bag cannot accumulate half in fp32
}


@pytest.mark.parametrize(("path", "row_layout", "dtype"), FORMS, ids=[f"{p}-{'rows' if r else 'api'}-{d}"
                                                                    for p, r, d in FORMS])
@pytest.mark.parametrize("pattern", [[3, 0, 2, 1, 4], [0, -1, 3, 5, 1, 1, -1, 4, 3], [3] * 5],
                         ids=["one_per_adapter", "some_without_or_empty", "one_adapter"])
def test_each_form_reads_only_each_slots_true_rank_rows(
    pattern: list[int], path: str, row_layout: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _spy_forms(monkeypatch)
    case = make_paged_case(pattern, hidden_in=40, slice_widths=(24, 8, 8), ranks=MIXED, dtype=dtype,
                           device=CPU, per_slice_scales=True, row_layout=row_layout, seed=len(pattern))
    assert torch_lora.is_row_layout(case.a_pages, case.b_pages) == row_layout
    actual = _run(case, path)
    assert set(ran) == {FORMS[path, row_layout, dtype]}
    assert not actual.isnan().any()
    assert_close_to_reference(actual, case.expected())
    untouched = (case.token_lora < 0) | (case.token_lora == 5)
    assert torch.equal(actual[untouched], case.out[untouched])


@pytest.mark.parametrize("row_layout", [True, False], ids=["in_place", "copied"])
def test_gathered_form_cut_into_chunks_of_tokens_with_different_page_counts(
    row_layout: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_lora = torch.tensor([3, 0, 2, 1, -1, 3, 4, 0, 2, 2, 1])
    case = make_paged_case(token_lora, hidden_in=20, slice_widths=(10, 6), ranks=[8, 24, 4, 64, 12],
                           dtype=torch.float32, device=CPU, per_slice_scales=True, row_layout=row_layout)
    per_token = 2 * 64 * 20 + 16 * 64  # the widest token: 8 pages
    monkeypatch.setattr(torch_lora, "GATHER_CHUNK_ELEMENTS", 3 * per_token)  # chunks of 3 tokens
    actual = _run(case, "gathered")
    assert_close_to_reference(actual, case.expected())


def test_one_batch_serves_two_placements_without_stale_indices() -> None:
    """The in-place form caches bag indices per (batch, placement): a re-placed slot must not reuse them."""
    case = make_paged_case([1, 0, 1, 2], hidden_in=16, slice_widths=(8, 8), ranks=[8, 16, 4],
                           dtype=torch.float32, device=CPU, row_layout=True, spare_pages=2)
    meta = prepare_lora_batch(case.token_lora, num_slots=3)
    assert_close_to_reference(_run(case, "gathered", meta), case.expected())
    held = case.pages.slot_pages
    moved = build_adapter_pages([held[1][:1], held[0] + held[1][1:], held[2]], [8, 12, 4], max_pages=2)
    moved_case = replace(case, pages=moved)
    assert_close_to_reference(_run(moved_case, "gathered", meta), moved_case.expected())


def test_grouped_form_views_consecutive_pages_and_copies_scattered_ones() -> None:
    pool = torch.arange(6 * 4, dtype=torch.float32).view(6, 4)
    pages = build_adapter_pages([[2, 3, 4], [5, 0]], [24, 16], max_pages=3)
    view = torch_lora._slot_pages(pool, pages, 0)
    copy = torch_lora._slot_pages(pool, pages, 1)
    assert view.data_ptr() == pool[2].data_ptr() and torch.equal(view, pool[2:5])
    assert copy.data_ptr() != pool[5].data_ptr() and torch.equal(copy, pool[[5, 0]])


def test_live_tokens_count_only_slots_that_hold_an_adapter() -> None:
    pages = build_adapter_pages([[0], [], [1, 2, 3], [4, 5]], [8, 0, 20, 16], max_pages=3)
    meta = prepare_lora_batch(torch.tensor([2, 1, -1, 0, 2, 1]), num_slots=4)
    live = live_tokens(meta, pages)
    assert (live.num_tokens, live.num_slots, live.max_pages) == (3, 2, 3)
    assert (live.page_rows, live.rank_rows) == ((1 + 3 + 3) * 8, 8 + 20 + 20)
    assert sorted(live.rows.tolist()) == [0, 3, 4]
    hidden_in, num_slices, hidden_out = 32, 3, 64
    assert live.elements_per_token(hidden_in, num_slices, hidden_out) == (3 * 32 * 56 + 64 * 48) // 3


def test_rule_uses_each_tokens_true_rank_not_the_pools_largest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Demo-sized q|k|v, rank-8 adapters in a pool that could hold rank 64: E is a rank-8 token's
    (10^4, small: gather in place), not a rank-64 one's (8·10^4, large: grouped at 8 per adapter)."""
    monkeypatch.setenv("LORAFLEET_KERNELS", "torch")
    ran = _spy_forms(monkeypatch)
    token_lora = torch.arange(64) % 8  # 8 tokens on each of 8 adapters
    case = make_paged_case(token_lora, hidden_in=256, slice_widths=(256, 128, 128), ranks=[8] * 8,
                           dtype=torch.float32, device=CPU, row_layout=True, max_pages=8)
    assert torch_lora.choose_path(64, 8, 3 * 64 * 256 + 512 * 64, in_place=True) == "grouped"
    assert torch_lora.choose_path(64, 8, 3 * 8 * 256 + 512 * 8, in_place=True) == "gathered"
    actual = case.run()
    assert ran == ["_bagged_delta"]
    assert_close_to_reference(actual, case.expected())


def test_unvalidated_metadata_works_on_pages() -> None:
    case = make_paged_case([1, -1, 0, 3, 2], hidden_in=16, slice_widths=(8, 8), ranks=[4, 8, 0, 16],
                           dtype=torch.float32, device=CPU, per_slice_scales=True, row_layout=True)
    meta = prepare_lora_batch(case.token_lora, num_slots=4, validate=False)
    for path in (None, *torch_lora.PATHS):
        assert_close_to_reference(_run(case, path, meta), case.expected())
