"""The Triton tile rules: tiles fit the device's shared memory, and split-K never leaves a split empty."""

from __future__ import annotations

import itertools

import pytest
import torch
from lorafleet.kernels import triton_config

SM89, SM90 = 99 * 1024, 227 * 1024


def test_fp32_prefill_tiles_shrink_to_fit_an_sm89_block_and_keep_full_depth_on_hopper() -> None:
    """BLOCK_M 64 x BLOCK_R 64 x BLOCK_K 128 in fp32 needs 128 KiB: more than sm_86/sm_89 give a block."""
    common = dict(block_m=64, num_tiles=8, hidden_in=4096, columns=192, element_bytes=4, target_programs=528)
    ada = triton_config.shrink_config(shared_budget=SM89, **common)
    hopper = triton_config.shrink_config(shared_budget=SM90, **common)
    assert (ada.block_r, ada.block_k, ada.shared_bytes) == (64, 64, 64 * 1024)
    assert (hopper.block_r, hopper.block_k, hopper.shared_bytes) == (64, 128, 128 * 1024)


@pytest.mark.parametrize("budget", [SM89, SM90], ids=["sm89", "sm90"])
def test_every_rule_chosen_tile_fits_and_covers_k_without_an_empty_split(budget: int) -> None:
    shapes = itertools.product([16, 64], [1, 40, 200], [8, 24, 48, 192, 1024], [1, 100, 4096, 14336], [2, 4])
    for block_m, tiles, columns, hidden_in, element in shapes:
        shrink = triton_config.shrink_config(block_m=block_m, num_tiles=tiles, hidden_in=hidden_in,
                                             columns=columns, element_bytes=element, shared_budget=budget,
                                             target_programs=528)
        assert shrink.shared_bytes <= budget
        assert 16 <= shrink.block_r <= 64 and 16 <= shrink.block_k <= 128
        assert shrink.k_per_split % shrink.block_k == 0
        assert shrink.split_k * shrink.k_per_split >= hidden_in > (shrink.split_k - 1) * shrink.k_per_split
        expand = triton_config.expand_config(block_m=block_m, max_rank=columns, widest=hidden_in,
                                             shared_budget=budget)
        assert expand.shared_bytes <= budget and 16 <= expand.block_r <= 32 and expand.block_n >= 16


def test_forced_split_k_is_kept_within_the_k_blocks() -> None:
    common = dict(block_m=16, num_tiles=4, hidden_in=150, columns=64, element_bytes=4, shared_budget=SM89,
                  target_programs=8)
    assert triton_config.shrink_config(split_k=64, **common).split_k == 2  # 150 = two 128-wide K blocks
    assert triton_config.shrink_config(split_k=1, **common).split_k == 1


def test_interpreter_runs_the_tiles_of_the_smallest_target() -> None:
    assert triton_config.shared_memory_budget(torch.device("cpu")) == SM89
