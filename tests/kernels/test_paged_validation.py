"""Bad placements and bad paged inputs raise `LoraKernelError` naming the problem, before any launch."""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import LoraKernelError, build_adapter_pages, prepare_lora_batch

BAD_PLACEMENTS = {
    "rank_larger_than_its_pages_hold": (
        ([[0, 1]], [20]), {}, r"rank 20 is held by ceil\(20 / 8\) = 3 pages, got 2"
    ),
    "more_pages_than_the_rank_needs": (([[0, 1]], [8]), {}, r"= 1 pages, got 2 \(\[0, 1\]\)"),
    "rank_past_the_page_table": (
        ([[0, 1, 2]], [24]), {"max_pages": 2}, "more than the page table's max_pages 2"
    ),
    "page_in_two_slots": (([[0], [3, 0]], [8, 16]), {}, "page 0 is used twice by slots 0 and 1"),
    "page_twice_in_one_slot": (([[4, 4]], [16]), {}, "page 4 is used twice by slot 0"),
    "negative_page": (([[-1]], [8]), {}, "page ids must be >= 0"),
    "negative_rank": (([[]], [-8]), {}, "rank must be >= 0"),
    "fewer_page_lists_than_ranks": (([[0]], [8, 8]), {}, "one page list per slot"),
}


@pytest.mark.parametrize(("args", "kwargs", "match"), BAD_PLACEMENTS.values(), ids=BAD_PLACEMENTS.keys())
def test_bad_placement_is_refused_naming_the_slot_and_pages(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(LoraKernelError, match=match):
        build_adapter_pages(*args, **({"max_pages": 4} | kwargs))


def _args(T: int = 3, K: int = 8, N: int = 6, P: int = 4, dtype=torch.float32) -> dict:
    return {
        "out": torch.zeros(T, N, dtype=dtype),
        "x": torch.ones(T, K, dtype=dtype),
        "lora_a_pages": torch.ones(P, 2, 8, K, dtype=dtype),
        "lora_b_pages": torch.ones(P, N, 8, dtype=dtype),
        "token_lora": torch.tensor([0, 1, -1][:T]),
        "scales": torch.ones(2),
        "pages": build_adapter_pages([[2], [0, 3]], [8, 12], max_pages=2),
        "slice_widths": (4, 2),
    }


BAD_INPUTS = {
    "page_table_points_past_the_pool": (
        {"lora_a_pages": torch.ones(3, 2, 8, 8), "lora_b_pages": torch.ones(3, 6, 8)},
        r"points at page 3, past the pool of 3 pages.*lora_a_pages \(3, 2, 8, 8\)",
    ),
    "pages_of_another_page_rank": (
        {"lora_a_pages": torch.ones(4, 2, 16, 8), "lora_b_pages": torch.ones(4, 6, 16)},
        "hold 16 rank rows each but the placement was built for page_rank 8",
    ),
    "b_pages_of_another_pool": ({"lora_b_pages": torch.ones(5, 6, 8)}, r"lora_b_pages must be \[P, N, PR\]"),
    "a_pages_without_slices": ({"lora_a_pages": torch.ones(4, 8, 8)}, r"lora_a_pages \[P, S, PR, K\]"),
    "x_of_another_K": ({"x": torch.ones(3, 9)}, "last dim must equal x's K"),
    "slices_not_summing_to_N": ({"slice_widths": (4, 1)}, "sum to out's N"),
    "scales_for_another_slot_count": (
        {"scales": torch.ones(3)}, r"scales must be float32 \[L\] or \[S, L\] for L = 2"
    ),
    "half_weights_for_fp32_x": ({"lora_a_pages": torch.ones(4, 2, 8, 8, dtype=torch.float16)}, "x's dtype"),
    "token_past_the_last_slot": ({"token_lora": torch.tensor([0, 2, 1])}, r"\[-1, 2\)"),
    "placement_on_another_device": (
        {"pages": build_adapter_pages([[2], [0, 3]], [8, 12], max_pages=2, device="meta")},
        "the page table is on meta",
    ),
}


@pytest.mark.parametrize(("override", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_paged_input_raises_before_touching_out(override: dict, match: str) -> None:
    args = _args() | override
    before = args["out"].clone()
    out, x, a, b, token_lora, scales = (args.pop(k) for k in
                                        ("out", "x", "lora_a_pages", "lora_b_pages", "token_lora", "scales"))
    with pytest.raises(ValueError, match=match) as info:
        kernels.add_lora_paged(out, x, a, b, token_lora, scales, **args)
    assert isinstance(info.value, LoraKernelError)
    assert torch.equal(out, before)


def test_meta_prepared_for_another_slot_count_is_rejected() -> None:
    args = _args()
    meta = prepare_lora_batch(args["token_lora"], num_slots=3)
    with pytest.raises(LoraKernelError, match="prepared for 3 tokens and 3 slots"):
        kernels.add_lora_paged(args["out"], args["x"], args["lora_a_pages"], args["lora_b_pages"],
                               args["token_lora"], args["scales"], pages=args["pages"],
                               slice_widths=args["slice_widths"], meta=meta)
