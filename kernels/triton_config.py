"""Tile sizes of the Triton kernels, chosen by written rules from shapes and the device's shared memory.

Multi-config `@triton.autotune` crashes on a CPU-only machine (where CI interprets the kernels),
and the grid must follow from shapes alone (CUDA graphs), so every size here is a rule:

shrink  BLOCK_R  next pow2 of S·R_max (R_max = max_pages·page_rank), clamped to [16, 64]: rank
                 blocks past a slot's S·rank live columns exit, so small blocks waste little on
                 small ranks; x is re-read per rank block, which is small next to A.
        BLOCK_K  8192 / BLOCK_R clamped to [32, 128] (A tile <= 16 KiB in bf16), then halved
                 (down to 16) until the pipelined tiles fit the device's shared memory.
        split-K  4 × SMs / (tiles × rank blocks), at most the K blocks, so no split is empty.
expand  BLOCK_R  next pow2 of R_max clamped to [16, 32]: the rank loop stops at each slot's
                 true rank, 16 rows at a time at least (the smallest tl.dot depth).
        BLOCK_N  128 for decode tiles, else 64, halved until the tiles fit shared memory.

Shared memory of a pipelined tl.dot loop, as Triton 3.9 allocates it on sm_80..sm_90 (checked
against the compiled kernels' metadata by tests/kernels/test_compile_for_gpu.py): (stages - 1)
buffers of both operand tiles. The budget is the device's opt-in maximum per block (99 KiB on
sm_86/sm_89, 227 KiB on sm_90); the interpreter uses the 99 KiB of the smallest target, so CPU
tests run the tiles a consumer GPU would.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
from lorafleet.kernels.batch import DECODE_BLOCK_M

NUM_STAGES = 3  # Triton's default software pipelining depth, passed explicitly at launch
SM89_SHARED_MEMORY = 99 * 1024  # sm_86 / sm_89 opt-in maximum per block; the interpreter's budget
MIN_BLOCK_K = 16


@dataclass(frozen=True)
class ShrinkConfig:
    block_r: int
    block_k: int
    split_k: int
    k_per_split: int  # K elements per split, a multiple of block_k
    shared_bytes: int  # the estimate the rule checked against the budget


@dataclass(frozen=True)
class ExpandConfig:
    block_n: int
    block_r: int
    shared_bytes: int


def pipelined_shared_bytes(rows: int, depth: int, cols: int, element_bytes: int) -> int:
    """Shared memory of a pipelined dot loop over [rows, depth] x [depth, cols] tiles."""
    return (NUM_STAGES - 1) * (rows * depth + depth * cols) * element_bytes


def shrink_config(
    *,
    block_m: int,
    num_tiles: int,
    hidden_in: int,
    columns: int,  # S * R_max: shrink output columns
    element_bytes: int,  # of x and A as loaded
    shared_budget: int,
    target_programs: int,
    split_k: int | None = None,  # None: by rule; tests force values
) -> ShrinkConfig:
    """The shrink's tiles for this shape; see the module docstring for the rule."""
    block_r = min(max(16, triton.next_power_of_2(columns)), 64)
    block_k = min(max(32, 8192 // block_r), 128, max(16, triton.next_power_of_2(hidden_in)))
    while block_k > MIN_BLOCK_K and (
        pipelined_shared_bytes(block_m, block_k, block_r, element_bytes) > shared_budget
    ):
        block_k //= 2
    k_blocks = triton.cdiv(hidden_in, block_k)
    if split_k is None:
        programs = num_tiles * triton.cdiv(columns, block_r)
        split_k = target_programs // max(programs, 1)
    split_k = max(1, min(split_k, k_blocks))
    k_per_split = triton.cdiv(k_blocks, split_k) * block_k
    shared = pipelined_shared_bytes(block_m, block_k, block_r, element_bytes)
    return ShrinkConfig(block_r, block_k, triton.cdiv(hidden_in, k_per_split), k_per_split, shared)


def expand_config(*, block_m: int, max_rank: int, widest: int, shared_budget: int) -> ExpandConfig:
    """The expand's tiles: both operands are fp32 in shared memory (partials, B converted)."""
    block_r = min(max(16, triton.next_power_of_2(max_rank)), 32)
    block_n = 128 if block_m == DECODE_BLOCK_M else 64
    block_n = min(block_n, max(16, triton.next_power_of_2(widest)))
    while block_n > 16 and pipelined_shared_bytes(block_m, block_r, block_n, 4) > shared_budget:
        block_n //= 2
    return ExpandConfig(block_n, block_r, pipelined_shared_bytes(block_m, block_r, block_n, 4))


@functools.lru_cache(maxsize=8)
def shared_memory_budget(device: torch.device) -> int:
    """Bytes of shared memory one program may use: the CUDA device's opt-in maximum per block."""
    if device.type != "cuda":
        return SM89_SHARED_MEMORY
    from triton.compiler import max_shared_mem

    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(max_shared_mem(index))


@functools.lru_cache(maxsize=8)
def target_programs(device: torch.device) -> int:
    """How many programs keep the device busy: 4 per SM on CUDA; a few on the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # small enough to keep interpreter runs quick, big enough to exercise split-K
