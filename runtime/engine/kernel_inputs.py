"""A scheduled batch as the paged attention kernels take it (the runner's CUDA path).

Rows go decode first (sequences adding one token), then the prefill chunks packed in order
(`layers/attention_cuda.py`). Everything integer is built on the host in one pass and uploaded in
two copies (one int64, one int32) through `HostStaging`: token ids, positions, KV slots, adapter
slots and the rows to sample; context lengths, block tables (int32, as the kernels read them),
cu_seqlens and start positions. Block tables are padded with the null block to a width rounded up
to a multiple of `TABLE_WIDTH_MULTIPLE`: few distinct widths, so few launch configs and Triton
specialisations, and entries past a context are never read anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lorafleet.runtime.engine.scheduler import ScheduledSeq
from lorafleet.runtime.engine.staging import HostStaging
from lorafleet.runtime.layers.attention import AttentionMetadata
from lorafleet.runtime.layers.attention_cuda import (
    AttentionKernels,
    AttentionShape,
    KernelAttention,
    PrefillChunks,
    decode_config,
    prefill_config,
)

TABLE_WIDTH_MULTIPLE = 16


@dataclass(frozen=True)
class KernelInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    attention: AttentionMetadata
    token_lora: torch.Tensor  # [T] int64, -1 = no adapter
    sample_rows: torch.Tensor  # [R] int64: the rows whose next token is sampled, in item order


def decode_first(items: Sequence[ScheduledSeq]) -> list[ScheduledSeq]:
    """The batch's items with the one-token ones first (stable otherwise)."""
    return [item for item in items if item.num_tokens == 1] + [item for item in items if item.num_tokens != 1]


def table_width(tables: Sequence[Sequence[int]]) -> int:
    longest = max((len(table) for table in tables), default=0)
    return max(1, -(-longest // TABLE_WIDTH_MULTIPLE)) * TABLE_WIDTH_MULTIPLE


def padded(tables: Sequence[Sequence[int]], width: int, fill: int) -> list[int]:
    """Row-major [len(tables), width], each row filled up with `fill`."""
    flat: list[int] = []
    for table in tables:
        flat.extend(table)
        flat.extend([fill] * (width - len(table)))
    return flat


def build_kernel_inputs(
    items: Sequence[ScheduledSeq],  # decode rows first (`decode_first`)
    token_lora: list[int],  # [T] each row's adapter slot, -1 = none
    sample_rows: list[int],
    *,
    block_size: int,
    null_block: int,
    staging: HostStaging,
    shape: AttentionShape,
    kernels: AttentionKernels,
) -> KernelInputs:
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    decode_tables: list[list[int]] = []
    context_lens: list[int] = []
    prefill_tables: list[list[int]] = []
    cu_seqlens, start_pos = [0], []
    for item in items:
        seq, start, n = item.seq, item.seq.num_computed, item.num_tokens
        table = seq.block_table
        ids.extend(seq.token_ids[start : start + n])
        positions.extend(range(start, start + n))
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(start, start + n))
        if n == 1:
            decode_tables.append(table)
            context_lens.append(start + 1)
        else:
            prefill_tables.append(table)
            start_pos.append(start)
            cu_seqlens.append(cu_seqlens[-1] + n)
    decode_width, prefill_width = table_width(decode_tables), table_width(prefill_tables)
    ids_t, positions_t, slots_t, lora_t, rows_t = staging.upload(
        [ids, positions, slots, token_lora, sample_rows], torch.int64
    )
    lens_t, decode_t, cu_t, start_t, prefill_t = staging.upload(
        [context_lens, padded(decode_tables, decode_width, null_block), cu_seqlens, start_pos,
         padded(prefill_tables, prefill_width, null_block)],
        torch.int32,
    )
    num_decodes, num_chunks = len(decode_tables), len(start_pos)
    triton = kernels.name == "triton"
    chunks = None
    if num_chunks:
        chunks = PrefillChunks(cu_t, start_t, prefill_t.view(num_chunks, prefill_width),
                               prefill_config(shape) if triton else None)
    kernel = KernelAttention(
        kernels, num_decodes, decode_t.view(num_decodes, decode_width), lens_t,
        decode_config(shape, num_decodes, decode_width) if triton and num_decodes else None, chunks,
    )
    return KernelInputs(ids_t, positions_t, AttentionMetadata(slots_t, (), None, kernel), lora_t, rows_t)
