"""`add_lora` against the per-token reference, on both paths (torch and Triton)."""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import reference

from tests.kernels.cases import assert_close_to_reference, make_case

PATTERNS = {
    "one_token": [1],
    "all_tokens_on_one_adapter": [2] * 9,
    "every_token_on_its_own_adapter": [3, 0, 2, 1],
    "interleaved_adapters": [0, 1, 2, 0, 1, 2, 2, 0, 1, 3, 3],
    "all_tokens_without_adapter": [-1] * 5,
    "some_tokens_without_adapter": [0, -1, 2, -1, 1, 1, -1],
}
MIXED_RANKS = [8, 16, 64, 16]  # slot 3 is rank 16: ranks 8/16/64 padded to R = 64 in one batch


@pytest.mark.parametrize("pattern", PATTERNS.values(), ids=PATTERNS.keys())
def test_token_patterns_match_reference_and_leave_rows_without_adapter_untouched(
    pattern: list[int], backend: str, device: torch.device
) -> None:
    case = make_case(
        pattern, hidden_in=67, slice_widths=(45,), ranks=MIXED_RANKS, dtype=torch.float32, device=device
    )
    expected = reference.add_lora(*case.single)
    out = case.out.clone()
    result = kernels.add_lora(out, *case.single[1:])
    assert result is out
    assert_close_to_reference(out, expected)
    untouched = case.token_lora < 0
    assert torch.equal(out[untouched], case.out[untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_each_dtype_matches_reference_within_its_tolerance(
    dtype: torch.dtype, backend: str, device: torch.device
) -> None:
    case = make_case(
        [1, 0, -1, 2, 1, 3, 0], hidden_in=33, slice_widths=(19,), ranks=MIXED_RANKS, dtype=dtype,
        device=device,
    )
    expected = reference.add_lora(*case.single)
    actual = kernels.add_lora(*case.single)
    assert actual.dtype == dtype
    assert_close_to_reference(actual, expected)


def test_prefill_sized_batch_uses_wide_tiles_and_matches_reference(
    backend: str, device: torch.device
) -> None:
    token_lora = torch.randint(-1, 3, (300,), generator=torch.Generator().manual_seed(5))
    meta = kernels.prepare_lora_batch(token_lora.to(device), num_slots=3)
    assert meta.block_m == 64
    case = make_case(token_lora, hidden_in=24, slice_widths=(20,), ranks=[16, 8, 16], dtype=torch.float16,
                     device=device)
    expected = reference.add_lora(*case.single)
    assert_close_to_reference(kernels.add_lora(*case.single, meta=meta), expected)


def test_strided_views_of_out_and_x_are_updated_in_place(backend: str, device: torch.device) -> None:
    case = make_case([0, 1, -1, 1, 0], hidden_in=21, slice_widths=(13,), ranks=[8, 16], dtype=torch.float32,
                     device=device)
    fused = torch.randn(5, 40, device=device)
    fused[:, 10:23] = case.out
    before = fused.clone()
    x_transposed = case.x.t().contiguous().t()  # same values, strides (1, T)
    out_view = fused[:, 10:23]  # a column view, as the runtime passes for one slice of qkv
    kernels.add_lora(out_view, x_transposed, *case.single[2:])
    expected = reference.add_lora(*case.single)
    assert_close_to_reference(fused[:, 10:23], expected)
    assert torch.equal(fused[:, :10], before[:, :10]) and torch.equal(fused[:, 23:], before[:, 23:])


def test_one_prepared_batch_serves_several_layers(backend: str, device: torch.device) -> None:
    token_lora = [2, 0, -1, 2, 1]
    meta = kernels.prepare_lora_batch(torch.tensor(token_lora, device=device), num_slots=3)
    for seed, (hidden_in, hidden_out) in enumerate([(16, 40), (40, 16), (23, 23)]):
        case = make_case(token_lora, hidden_in=hidden_in, slice_widths=(hidden_out,), ranks=[8, 8, 16],
                         dtype=torch.float32, device=device, seed=seed)
        expected = reference.add_lora(*case.single)
        assert_close_to_reference(kernels.add_lora(*case.single, meta=meta), expected)


def test_two_runs_are_bit_identical(backend: str, device: torch.device) -> None:
    case = make_case([0, 1, 1, 0, 2, -1], hidden_in=50, slice_widths=(30,), ranks=[8, 16, 8],
                     dtype=torch.bfloat16, device=device)
    assert torch.equal(kernels.add_lora(*case.single), kernels.add_lora(*case.single))


def test_a_rows_result_does_not_depend_on_the_other_rows(backend: str, device: torch.device) -> None:
    case = make_case([1, 0, 2, 1, 1, 0], hidden_in=40, slice_widths=(24,), ranks=[8, 16, 8],
                     dtype=torch.float32, device=device)
    batched = kernels.add_lora(*case.single)
    out, x, lora_a, lora_b, token_lora, scales = case.single
    for t in range(len(token_lora)):
        row = slice(t, t + 1)
        alone = kernels.add_lora(out[row].clone(), x[row], lora_a, lora_b, token_lora[row], scales)
        torch.testing.assert_close(alone[0], batched[t], atol=1e-6, rtol=1e-6)


def test_empty_batch_returns_out_unchanged(backend: str, device: torch.device) -> None:
    case = make_case([], hidden_in=8, slice_widths=(8,), ranks=[8], dtype=torch.float32, device=device)
    out = case.out.clone()
    assert kernels.add_lora(out, *case.single[1:]) is out and out.shape == (0, 8)
