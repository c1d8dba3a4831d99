"""`prepare_lora_batch`: grouping and tiles that the kernels rely on."""

from __future__ import annotations

import pytest
import torch
from lorafleet.kernels import LoraKernelError, prepare_lora_batch
from lorafleet.kernels.batch import max_tiles


def _rows_by_tile(meta) -> list[tuple[int, list[int]]]:
    tiles = []
    for slot, start, end in zip(meta.tile_slot.tolist(), meta.tile_start.tolist(), meta.tile_end.tolist(),
                                strict=True):
        if slot >= 0:
            tiles.append((slot, meta.sorted_tokens[start:end].tolist()))
    return tiles


@pytest.mark.parametrize("block_m", [16, 64])
def test_tiles_cover_every_adapter_token_exactly_once_with_one_slot_each(block_m: int, device) -> None:
    token_lora = torch.randint(-1, 5, (203,), generator=torch.Generator().manual_seed(3)).to(device)
    meta = prepare_lora_batch(token_lora, num_slots=5, block_m=block_m)
    seen: list[int] = []
    for slot, rows in _rows_by_tile(meta):
        assert 0 < len(rows) <= block_m
        assert all(int(token_lora[t]) == slot for t in rows)
        seen += rows
    assert sorted(seen) == (token_lora >= 0).nonzero().flatten().tolist()
    assert meta.num_tiles == max_tiles(203, 5, block_m)


def test_grouping_is_stable_and_puts_tokens_without_adapter_last(device) -> None:
    meta = prepare_lora_batch(torch.tensor([2, -1, 0, 2, -1, 0], device=device), num_slots=3)
    assert meta.sorted_tokens.tolist() == [2, 5, 0, 3, 1, 4]
    assert meta.slot_counts.tolist() == [2, 0, 2] and meta.slot_starts.tolist() == [0, 2, 2]
    assert meta.has_lora_tokens


def test_decode_batches_use_small_tiles_and_prefill_batches_wide_ones(device) -> None:
    assert prepare_lora_batch(torch.zeros(256, dtype=torch.long, device=device), 1).block_m == 16
    assert prepare_lora_batch(torch.zeros(257, dtype=torch.long, device=device), 1).block_m == 64


def test_batch_without_adapter_tokens_is_marked_so_nothing_launches(device) -> None:
    meta = prepare_lora_batch(torch.full((4,), -1, device=device), num_slots=2)
    assert not meta.has_lora_tokens
    assert (meta.tile_slot == -1).all()


@pytest.mark.parametrize("bad", [[0, 3], [-2, 0]], ids=["past_last_slot", "below_minus_one"])
def test_slot_out_of_range_raises_value_error_naming_the_range(bad: list[int], device) -> None:
    with pytest.raises(ValueError, match=r"\[-1, 3\).*token_lora shape \(2,\)"):
        prepare_lora_batch(torch.tensor(bad, device=device), num_slots=3)


def test_unvalidated_batch_skips_out_of_range_slots_instead_of_reading_past_the_weights(device) -> None:
    meta = prepare_lora_batch(torch.tensor([0, 7, 1], device=device), num_slots=2, validate=False)
    assert sorted(t for _, rows in _rows_by_tile(meta) for t in rows) == [0, 2]


@pytest.mark.parametrize(
    ("token_lora", "kwargs", "match"),
    [
        (torch.zeros(2, 2, dtype=torch.long), {}, "1-D"),
        (torch.zeros(2), {}, "integer"),
        (torch.zeros(2, dtype=torch.long), {"block_m": 24}, "power of two"),
    ],
    ids=["two_dims", "float_slots", "odd_block_m"],
)
def test_bad_arguments_raise_lora_kernel_error(token_lora, kwargs, match: str) -> None:
    with pytest.raises(LoraKernelError, match=match):
        prepare_lora_batch(token_lora, num_slots=2, **kwargs)
