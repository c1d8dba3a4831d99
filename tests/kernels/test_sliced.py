"""`add_lora_sliced`: q/k/v and gate/up in one shrink and one expand launch."""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import reference

from tests.kernels.cases import assert_close_to_reference, make_case

GQA_QKV = (48, 16, 16)  # k/v narrower than q
GATE_UP = (40, 40)


@pytest.mark.parametrize("widths", [GQA_QKV, GATE_UP], ids=["gqa_qkv", "gate_up"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_slices_of_unequal_widths_match_reference(
    widths: tuple[int, ...], dtype: torch.dtype, backend: str, device: torch.device
) -> None:
    case = make_case([0, 2, -1, 1, 2, 2, 0], hidden_in=37, slice_widths=widths, ranks=[8, 16, 64],
                     dtype=dtype, device=device, per_slice_scales=True)
    args = (case.x, case.lora_a, case.lora_b, case.token_lora, case.scales)
    expected = reference.add_lora_sliced(case.out.clone(), *args, widths)
    actual = kernels.add_lora_sliced(case.out.clone(), *args, slice_widths=widths)
    assert_close_to_reference(actual, expected)


def test_fused_form_equals_one_add_lora_per_slice(backend: str, device: torch.device) -> None:
    case = make_case([1, 0, 1, -1, 0], hidden_in=29, slice_widths=GQA_QKV, ranks=[16, 8], dtype=torch.float32,
                     device=device)
    meta = kernels.prepare_lora_batch(case.token_lora, num_slots=2)
    fused = kernels.add_lora_sliced(case.out.clone(), case.x, case.lora_a, case.lora_b, case.token_lora,
                                    case.scales, slice_widths=GQA_QKV, meta=meta)
    separate = case.out.clone()
    begin = 0
    for s, width in enumerate(GQA_QKV):
        cols = slice(begin, begin + width)
        kernels.add_lora(separate[:, cols], case.x, case.lora_a[:, s], case.lora_b[:, cols], case.token_lora,
                         case.scales, meta=meta)
        begin += width
    torch.testing.assert_close(fused, separate, atol=1e-6, rtol=1e-6)


def test_adapter_without_a_slice_leaves_that_slice_unchanged(backend: str, device: torch.device) -> None:
    """Like PEFT's r8-qv adapter on a fused qkv: k is not targeted, its A/B rows stay zero."""
    case = make_case([0, 0, 0], hidden_in=16, slice_widths=GQA_QKV, ranks=[8], dtype=torch.float16,
                     device=device)
    lora_a = case.lora_a.clone()
    lora_a[0, 1].zero_()
    lora_b = case.lora_b.clone()
    lora_b[0, 48:64].zero_()
    out = kernels.add_lora_sliced(case.out.clone(), case.x, lora_a, lora_b, case.token_lora, case.scales,
                                  slice_widths=GQA_QKV)
    assert torch.equal(out[:, 48:64], case.out[:, 48:64])
    assert not torch.equal(out[:, :48], case.out[:, :48]) and not torch.equal(out[:, 64:], case.out[:, 64:])
