"""The written rules behind the attention launches: split-K, tiles from registers and shared memory."""

from __future__ import annotations

import pytest
from lorafleet.kernels.attention_config import (
    MIN_PARTITION,
    PROGRAMS_PER_SM,
    DeviceLimits,
    decode_config,
    prefill_config,
    smem_bytes,
)

H100 = DeviceLimits(num_sms=132, smem_bytes=227 * 1024)
L4 = DeviceLimits(num_sms=58, smem_bytes=99 * 1024)


def _decode(batch: int, max_context: int, limits: DeviceLimits = H100, **kw):
    return decode_config(batch=batch, num_kv_heads=8, group=4, head_dim=128, max_context=max_context, elem=2,
                         limits=limits, **kw)


def test_one_sequence_with_a_long_context_is_split_to_fill_the_device() -> None:
    config = _decode(batch=1, max_context=32768)
    assert config.is_split
    programs = 1 * 8 * config.num_partitions  # batch x KV heads x partitions
    target = PROGRAMS_PER_SM * H100.num_sms
    assert target * 0.9 <= programs <= target * 1.1
    covered = config.partition_size * config.num_partitions
    assert covered >= 32768 > covered - config.partition_size  # no partition past the context


def test_a_batch_that_fills_the_device_is_not_split() -> None:
    assert not _decode(batch=128, max_context=32768).is_split
    assert not _decode(batch=1, max_context=2 * MIN_PARTITION - 16).is_split  # too short to be worth it


@pytest.mark.parametrize(("batch", "max_context"),
                         [(1, 512), (8, 4096), (32, 4096), (32, 32768), (4, 100_000)])
def test_partitions_are_at_least_the_minimum_and_cover_the_context(batch: int, max_context: int) -> None:
    config = _decode(batch, max_context)
    assert config.partition_size % config.block_n == 0
    assert config.num_partitions * config.partition_size >= max_context
    if config.is_split:
        assert config.partition_size >= MIN_PARTITION


def test_the_grid_depends_on_the_bucket_only() -> None:
    """Same (batch, block-table width) -> same launch, whatever the context lengths inside."""
    assert _decode(batch=4, max_context=4096) == _decode(batch=4, max_context=4096)
    assert _decode(batch=4, max_context=4096, partition_size=1024).num_partitions == 4


@pytest.mark.parametrize("limits", [L4, H100], ids=["sm89_99KiB", "sm90_227KiB"])
@pytest.mark.parametrize("elem", [2, 4], ids=["16bit", "fp32"])
@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128, 256])
def test_tiles_fit_shared_memory_and_the_register_budget(limits: DeviceLimits, elem: int,
                                                         head_dim: int) -> None:
    for group in (1, 4, 8):
        dec = decode_config(batch=1, num_kv_heads=8, group=group, head_dim=head_dim, max_context=4096,
                            elem=elem, limits=limits)
        assert smem_bytes(dec.block_g, dec.block_n, dec.block_d, elem) <= limits.smem_bytes
        threads = 32 * dec.num_warps  # accumulator + K/V tile per thread within the budget
        assert (dec.block_g + dec.block_n) * dec.block_d <= 48 * threads or dec.block_n == 16
        pre = prefill_config(group=group, head_dim=head_dim, elem=elem, limits=limits)
        assert smem_bytes(pre.block_m, pre.block_n, pre.block_d, elem) <= limits.smem_bytes
        assert pre.block_m * pre.block_d <= 32 * 32 * pre.num_warps or pre.block_m == 16
        assert pre.block_m >= pre.block_g and pre.block_q >= 1


def test_less_shared_memory_gives_smaller_tiles() -> None:
    small = DeviceLimits(num_sms=16, smem_bytes=16 * 1024)
    roomy = prefill_config(group=1, head_dim=64, elem=2, limits=H100)
    tight = prefill_config(group=1, head_dim=64, elem=2, limits=small)
    assert (tight.block_m, tight.block_n) < (roomy.block_m, roomy.block_n)
    assert smem_bytes(tight.block_m, tight.block_n, tight.block_d, 2) <= small.smem_bytes
    shape = {"batch": 1, "num_kv_heads": 1, "group": 1, "head_dim": 64, "max_context": 64, "elem": 4}
    dec_roomy = decode_config(**shape, limits=H100)
    dec_tight = decode_config(**shape, limits=DeviceLimits(16, 20 * 1024))
    assert dec_tight.block_n < dec_roomy.block_n
