"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step of a 32-layer model launches ~1,000 small kernels; on a GPU the host cannot issue
them as fast as the GPU runs them. A CUDA graph records the launches once and replays them in one
call. Graphs need fixed shapes and fixed addresses, so:

- every decode-only step is padded up to the smallest bucket (1, 2, 4, 8, ... up to the largest
  batch) that holds it; padded rows have context 0 (the attention kernel writes zeros), adapter
  slot -1 (the LoRA kernels skip them) and write their keys/values into the runner's null block,
  a KV block the block manager never hands out;
- the inputs live in static buffers (token ids, positions, KV slots, adapter slots, block tables
  `max_blocks` wide, context lengths) filled before each replay with two non-blocking copies from
  pinned host memory (per bucket the fields sit side by side, so one copy per dtype fills them);
- whatever the forward derives from them (the LoRA tiles: `prepare_lora_batch(validate=False)`,
  the KV writes, the attention launches) is recorded inside the graph, so a replay recomputes it
  from the new contents; the adapters' page tables are device tensors updated in place
  (`page_tables.py`), so adapters placed after the capture are read where they are now.

This class knows nothing of the model: `forward(static, with_lora) -> hidden [b, hidden]` (the
model runner's) is what it records, once per bucket and LoRA variant (a batch with no adapter row
replays a graph without the LoRA kernels). Steps it cannot take (prefill, batches larger than the
largest bucket) run eagerly. With `capture=False` the same static-buffer path runs eagerly: that
is how the CPU test suite checks its logic against the normal path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

INT64_FIELDS = 4  # input ids, positions, KV slots, adapter slots


@dataclass(frozen=True)
class StaticBatch:
    """One bucket's views of the static buffers."""

    input_ids: torch.Tensor  # [b] int64
    positions: torch.Tensor  # [b] int64
    slot_mapping: torch.Tensor  # [b] int64
    token_lora: torch.Tensor  # [b] int64
    context_lens: torch.Tensor  # [b] int32
    block_tables: torch.Tensor  # [b, max_blocks] int32


@dataclass(frozen=True)
class DecodeRow:
    token_id: int
    position: int  # of the new token; the context is position + 1
    slot: int  # KV slot of the new token
    adapter_slot: int  # -1 = base
    block_table: Sequence[int]


Forward = Callable[[StaticBatch, bool], torch.Tensor]


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... and max_batch_size itself: padding costs at most as many rows as the batch has."""
    buckets, size = [], 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    return (*buckets, max_batch_size)


class DecodeGraphs:
    def __init__(
        self,
        forward: Forward,
        *,
        buckets: Sequence[int],
        max_blocks: int,
        block_size: int,
        null_block: int,
        device: torch.device,
        capture: bool,
        lora_variants: Sequence[bool] = (False, True),
    ) -> None:
        self.forward = forward
        self.buckets = tuple(sorted(buckets))
        self.max_batch = self.buckets[-1]
        self.max_blocks = max_blocks
        self.block_size = block_size
        self.null_slot = null_block * block_size
        self.device = device
        self.capture = capture
        self.lora_variants = tuple(lora_variants)
        pinned = device.type == "cuda"
        biggest = self.max_batch
        self._int64 = torch.zeros(INT64_FIELDS * biggest, dtype=torch.int64, device=device)
        self._int32 = torch.zeros(biggest * (1 + max_blocks), dtype=torch.int32, device=device)
        self._host64 = torch.zeros(self._int64.numel(), dtype=torch.int64, pin_memory=pinned)
        self._host32 = torch.full((self._int32.numel(),), null_block, dtype=torch.int32, pin_memory=pinned)
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._copied: torch.cuda.Event | None = None  # behind the last copy out of the host buffers
        self.pool: Any = None  # the graphs' shared memory pool (torch's handle)
        self.graph_bytes = 0  # device memory the captures took (measured around them)
        self.num_runs = 0  # decode steps taken through the static buffers

    def static(self, bucket: int) -> StaticBatch:
        """The views bucket `bucket` reads: its fields packed side by side at the buffers' start."""
        b, width = bucket, self.max_blocks
        ids, positions, slots, lora = (self._int64[i * b : (i + 1) * b] for i in range(INT64_FIELDS))
        lens = self._int32[:b]
        tables = self._int32[b : b + b * width].view(b, width)
        return StaticBatch(ids, positions, slots, lora, lens, tables)

    def bucket_for(self, num_rows: int) -> int | None:
        for bucket in self.buckets:
            if bucket >= num_rows:
                return bucket
        return None

    def capture_all(self) -> None:
        """Records every (bucket, LoRA variant), largest first so the smaller ones reuse its memory.
        Each is run once eagerly first (Triton compiles, cuBLAS allocates its workspace)."""
        before = torch.cuda.memory_reserved(self.device)
        with torch.inference_mode():
            for bucket in reversed(self.buckets):
                for with_lora in self.lora_variants:
                    self._fill(bucket, [])  # all rows padded: nothing real is written or read
                    side = torch.cuda.Stream(self.device)
                    side.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(side):
                        self.forward(self.static(bucket), with_lora)
                    torch.cuda.current_stream(self.device).wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self.pool):
                        hidden = self.forward(self.static(bucket), with_lora)
                    self.pool = graph.pool()
                    self._graphs[bucket, with_lora] = (graph, hidden)
        torch.cuda.synchronize(self.device)
        self.graph_bytes = torch.cuda.memory_reserved(self.device) - before

    def run(self, rows: Sequence[DecodeRow], with_lora: bool) -> torch.Tensor:  # [len(rows), hidden]
        """One decode step for `rows` (at most `max_batch`); the result is valid until the next run."""
        bucket = self.bucket_for(len(rows))
        assert bucket is not None, f"{len(rows)} rows exceed the largest bucket {self.max_batch}"
        if with_lora not in self.lora_variants:  # e.g. only the LoRA variant was captured
            with_lora = self.lora_variants[0]
        self._fill(bucket, rows)
        self.num_runs += 1
        if not self.capture:
            return self.forward(self.static(bucket), with_lora)[: len(rows)]
        graph, hidden = self._graphs[bucket, with_lora]
        graph.replay()
        return hidden[: len(rows)]

    def _fill(self, bucket: int, rows: Sequence[DecodeRow]) -> None:
        """Writes `rows` and the padding behind them into the host buffers, then copies bucket
        `bucket`'s fields to the device (one copy per dtype, non-blocking from pinned memory)."""
        b, n, width = bucket, len(rows), self.max_blocks
        if self._copied is not None:  # never overwrite pinned memory a copy still reads
            self._copied.synchronize()
        host64, host32 = self._host64.numpy(), self._host32.numpy()
        ids, positions, slots, lora = (host64[i * b : (i + 1) * b] for i in range(INT64_FIELDS))
        lens = host32[:b]
        ids[:n] = [row.token_id for row in rows]
        positions[:n] = [row.position for row in rows]
        slots[:n] = [row.slot for row in rows]
        lora[:n] = [row.adapter_slot for row in rows]
        lens[:n] = [row.position + 1 for row in rows]
        for i, row in enumerate(rows):  # entries past a row's context are never read: left as they are
            start = b + i * width
            host32[start : start + len(row.block_table)] = row.block_table
        ids[n:], positions[n:], lora[n:], lens[n:] = 0, 0, -1, 0
        slots[n:] = self.null_slot + np.arange(b - n) % self.block_size  # spread over the null block
        self._int64[: INT64_FIELDS * b].copy_(self._host64[: INT64_FIELDS * b], non_blocking=True)
        self._int32[: b * (1 + width)].copy_(self._host32[: b * (1 + width)], non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record(torch.cuda.current_stream(self.device))
