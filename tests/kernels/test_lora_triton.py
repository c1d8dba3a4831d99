"""Triton-only paths: split-K choices, rank blocks, the decode (BGMV-like) tiling."""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import prepare_lora_batch, reference

from tests.kernels.cases import assert_close_to_reference, make_case


@pytest.mark.parametrize("split_k", [1, 2, 5, 64], ids=lambda s: f"split_k{s}")
def test_every_split_k_gives_the_reference_result(split_k: int, triton_backend: str, device) -> None:
    from lorafleet.kernels import lora

    case = make_case([0, 1, 1, -1, 2], hidden_in=150, slice_widths=(20, 12), ranks=[8, 16, 64],
                     dtype=torch.float32, device=device, per_slice_scales=True)
    meta = prepare_lora_batch(case.token_lora, num_slots=3)
    expected = reference.add_lora_sliced(case.out.clone(), case.x, case.lora_a, case.lora_b, case.token_lora,
                                         case.scales, case.slice_widths)
    actual = lora.apply(case.out.clone(), case.x, case.lora_a, case.lora_b, case.scales,
                        case.slice_widths, meta, split_k=split_k)
    assert_close_to_reference(actual, expected)


def test_decode_batch_with_one_token_per_adapter_across_many_slots(triton_backend: str, device) -> None:
    order = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    token_lora = torch.cat([order, torch.tensor([-1, 5, 5])])  # 24 adapters, one of them twice
    case = make_case(token_lora, hidden_in=96, slice_widths=(64,), ranks=[16] * 24, dtype=torch.float16,
                     device=device)
    meta = prepare_lora_batch(case.token_lora, num_slots=24)
    assert meta.block_m == 16
    assert_close_to_reference(kernels.add_lora(*case.single, meta=meta), reference.add_lora(*case.single))


def test_prefill_fused_rank_64_qkv_spans_several_rank_blocks(triton_backend: str, device) -> None:
    token_lora = torch.randint(-1, 2, (260,), generator=torch.Generator().manual_seed(2))
    widths = (32, 16, 16)  # S * R = 192 output columns of shrink: three 64-wide rank blocks
    case = make_case(token_lora, hidden_in=16, slice_widths=widths, ranks=[64, 8], dtype=torch.bfloat16,
                     device=device)
    args = (case.x, case.lora_a, case.lora_b, case.token_lora, case.scales)
    expected = reference.add_lora_sliced(case.out.clone(), *args, widths)
    assert_close_to_reference(kernels.add_lora_sliced(case.out.clone(), *args, slice_widths=widths), expected)


def test_triton_and_torch_paths_agree(monkeypatch: pytest.MonkeyPatch, device) -> None:
    case = make_case([3, 1, 0, 3, -1, 2], hidden_in=70, slice_widths=(33,), ranks=[8, 16, 64, 8],
                     dtype=torch.float32, device=device)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("LORAFLEET_KERNELS", backend)
        results[backend] = kernels.add_lora(*case.single)
    torch.testing.assert_close(results["triton"], results["torch"], atol=1e-5, rtol=1e-5)
