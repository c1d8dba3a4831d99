"""Tile sizes and the split-K rule of the paged-attention kernels, chosen by written rules.

Multi-config `@triton.autotune` cannot run on a CPU-only machine (CI interprets the kernels), so
every launch parameter comes from a rule over the problem's shape and the device's limits:

- **Tiles from registers, then shared memory.** K/V are gathered through the block table, so
  each element of a K/V tile costs a 64-bit address in registers as well as its value: register
  pressure binds before shared memory does. Each thread may hold a measured number of tile
  elements (the fp32 accumulator, the gathered K/V tile; less for fp32 inputs), which fixes the
  largest tile for a head_dim and warp count; the tile is then shrunk until `smem_bytes`, an
  upper bound on what Triton stages in shared memory, fits the device's opt-in shared memory per
  block (99 KiB on sm_86/sm_89, e.g. the L4; 163 KiB on sm_80; 227 KiB on sm_90).
  `tests/kernels/test_attention_compile.py` compiles the chosen tiles for sm_89 and sm_90 and
  checks the compiler's shared memory against the bound and the limit, and that nothing spills.
- **Split-K for decode** (flash-decoding). One program per (sequence, KV head) leaves most SMs idle
  when the batch is small; then the context is cut into partitions, each program writes a partial
  (max, sum, unnormalised output) and a second small kernel combines them. Decided from the batch
  and the block table's width only (never from the context lengths' values), so the grid is fixed
  for a (batch, max_blocks) bucket and a CUDA graph can capture it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# Opt-in shared memory per block by compute capability, for torch builds whose device properties
# do not report it (bytes).
SMEM_BY_ARCH = {(8, 0): 163 * 1024, (8, 6): 99 * 1024, (8, 7): 163 * 1024, (8, 9): 99 * 1024,
                (9, 0): 227 * 1024}
DEFAULT_SMEM = 99 * 1024  # the smallest of the GPUs we serve on (L4, A10)
INTERPRETER_SMS = 4  # few programs keep interpreter runs quick yet exercise split-K

# Register budgets, in tile elements per thread, that compile without spills (measured on
# sm_89/sm_90 with tests/kernels/attention_compile_script.py).
THREAD_ELEMENTS = 32  # prefill: the accumulator [rows, D]; half of it for the K/V tile [keys, D]
DECODE_THREAD_ELEMENTS = 48  # decode: accumulator and K/V tile together
# fp32 inputs keep fp32 operands (2x the registers) and the exact fp32 dot holds more of them
# live: half the K/V budget for decode and a quarter of both for prefill compile clean
FP32_DECODE_SHARE = 2
FP32_PREFILL_SHARE = 4
MIN_PARTITION = 256  # tokens: below this a partition's fixed cost outweighs its reads
PROGRAMS_PER_SM = 4  # enough resident programs per SM to keep HBM busy at decode


@dataclass(frozen=True)
class DeviceLimits:
    num_sms: int
    smem_bytes: int  # opt-in shared memory per block


@dataclass(frozen=True)
class DecodeConfig:
    block_g: int  # query heads of one KV head, padded to a power of two >= 16 (tl.dot's M)
    block_n: int  # keys per inner iteration
    block_d: int  # head_dim padded to a power of two
    partition_size: int  # tokens per split-K partition, a multiple of block_n
    num_partitions: int  # 1: no split, the kernel writes the output itself
    num_warps: int
    num_stages: int

    @property
    def is_split(self) -> bool:
        return self.num_partitions > 1


@dataclass(frozen=True)
class PrefillConfig:
    block_g: int  # query heads of one KV head, padded to a power of two
    block_q: int  # query tokens per program; block_q * block_g rows in tl.dot's M
    block_n: int  # keys per inner iteration
    block_d: int
    num_warps: int
    num_stages: int

    @property
    def block_m(self) -> int:
        return self.block_q * self.block_g


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=8)
def device_limits(device: torch.device) -> DeviceLimits:
    """SMs and shared memory of a CUDA device; small fixed figures for the CPU interpreter."""
    if device.type != "cuda":
        return DeviceLimits(INTERPRETER_SMS, DEFAULT_SMEM)
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or SMEM_BY_ARCH.get(
        (props.major, props.minor), DEFAULT_SMEM
    )
    return DeviceLimits(props.multi_processor_count, int(smem))


def dot_element_size(dtype: torch.dtype, dot_fp32: bool) -> int:
    """Bytes per element of the tiles tl.dot reads (fp32 when the kernel converts before dot)."""
    return 4 if dot_fp32 else dtype.itemsize


def smem_bytes(block_m: int, block_n: int, block_d: int, elem: int) -> int:
    """Upper bound on Triton's shared memory for one program: the query and probability tiles
    staged for tl.dot, two K/V tiles (fp32 loads are double-buffered), 1 KiB of barriers.
    Checked against the compiler's own figure in tests/kernels/test_attention_compile.py."""
    return elem * (block_m * block_d + block_m * block_n + 2 * block_n * block_d) + 1024


def _largest_power_of_2(limit: int, low: int, high: int) -> int:
    """The largest power of two <= limit, clamped to [low, high]."""
    power = 1 << (limit.bit_length() - 1) if limit > 0 else 1
    return max(low, min(high, power))


def decode_config(
    *,
    batch: int,
    num_kv_heads: int,
    group: int,  # query heads per KV head
    head_dim: int,
    max_context: int,  # block_tables width * block_size: the longest context the grid must cover
    elem: int,  # bytes per dot element
    limits: DeviceLimits,
    partition_size: int | None = None,  # forced by tests; None: the split-K rule
    block_n: int | None = None,  # forced by tests; None: the register and shared-memory rule
) -> DecodeConfig:
    """Tiles by registers and shared memory, then split-K when (sequences x KV heads) cannot
    fill the device."""
    block_g = max(16, next_power_of_2(group))
    block_d = max(16, next_power_of_2(head_dim))
    num_warps = 4 if block_g * block_d <= THREAD_ELEMENTS * 128 else 8
    if block_n is None:
        # per thread: the fp32 accumulator [block_g, D] plus the gathered K (then V) tile, whose
        # elements each also hold a 64-bit address, within DECODE_THREAD_ELEMENTS
        threads = 32 * num_warps
        left = max(0, DECODE_THREAD_ELEMENTS - block_g * block_d // threads)
        left //= FP32_DECODE_SHARE if elem == 4 else 1
        block_n = _largest_power_of_2(left * threads // block_d, 16, 64)
        while block_n > 16 and smem_bytes(block_g, block_n, block_d, elem) > limits.smem_bytes:
            block_n //= 2
    if partition_size is None:
        partition_size = split_partition_size(batch * num_kv_heads, max_context, limits.num_sms)
    partition_size = max(block_n, cdiv(partition_size, block_n) * block_n)
    num_partitions = max(1, cdiv(max_context, partition_size))
    return DecodeConfig(block_g, block_n, block_d, partition_size, num_partitions,
                        num_warps=num_warps, num_stages=2)


def split_partition_size(programs: int, max_context: int, num_sms: int) -> int:
    """Tokens per partition: the whole context (no split) when `programs` = B x KVH already gives
    each SM PROGRAMS_PER_SM programs; otherwise about enough partitions to get there, each a
    multiple of MIN_PARTITION tokens (rounding up can leave up to one partition's worth fewer)."""
    target = PROGRAMS_PER_SM * num_sms
    if programs >= target or max_context < 2 * MIN_PARTITION:
        return max(max_context, 1)
    partitions = min(cdiv(target, programs), cdiv(max_context, MIN_PARTITION))
    return cdiv(cdiv(max_context, partitions), MIN_PARTITION) * MIN_PARTITION


def prefill_config(
    *,
    group: int,
    head_dim: int,
    elem: int,
    limits: DeviceLimits,
    block_q: int | None = None,  # forced by tests
    block_n: int | None = None,
) -> PrefillConfig:
    """Rows (block_q tokens x block_g heads) and keys per tile from a per-thread budget: the fp32
    accumulator [rows, D] gets THREAD_ELEMENTS, the gathered K/V tile [keys, D] half as many (a
    quarter of both for fp32 inputs); then shrunk until shared memory fits."""
    block_g = next_power_of_2(group)
    block_d = max(16, next_power_of_2(head_dim))
    num_warps = 8 if block_d >= 128 else 4
    budget = THREAD_ELEMENTS * 32 * num_warps // (FP32_PREFILL_SHARE if elem == 4 else 1) // block_d
    rows = max(block_g, _largest_power_of_2(budget, 16, 128))
    keys = _largest_power_of_2(budget // 2, 16, min(64, rows))  # gathered: an address per element
    while smem_bytes(rows, keys, block_d, elem) > limits.smem_bytes:
        if keys > 16:
            keys //= 2
        elif rows > max(16, block_g):
            rows //= 2
        else:
            break  # the smallest tile; head_dim <= 256 always fits 99 KiB
    block_q = block_q or max(1, rows // block_g)
    block_n = block_n or keys
    return PrefillConfig(block_g, block_q, block_n, block_d, num_warps, num_stages=2)
