"""Host staging for a step's integer metadata: packed on the host, one copy per dtype.

A step needs a handful of small integer tensors (token ids, positions, KV slots, adapter slots,
block tables, context lengths, ...). Made one by one with `torch.tensor(list, device=cuda)`, each is
a pageable host-to-device copy that waits for the host. Here they are written side by side into one
host buffer per dtype and copied with a single `non_blocking` copy, then sliced into views.

On CUDA the host buffers are pinned (page-locked), so the copy is asynchronous: the host goes on
preparing while the GPU still runs the previous step. Two buffers alternate, and a buffer is
written again only after the event recorded behind its last copy has completed, so a copy in
flight is never overwritten. On the CPU there is nothing to copy: the packed tensor is the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

NUMPY = {torch.int32: np.int32, torch.int64: np.int64}
INITIAL_ELEMENTS = 1 << 14


class _HostBuffer:
    def __init__(self, dtype: torch.dtype, pinned: bool) -> None:
        self.dtype = dtype
        self.pinned = pinned
        self.tensor = self._allocate(INITIAL_ELEMENTS)
        self.event: torch.cuda.Event | None = None  # behind the last copy out of this buffer

    def _allocate(self, size: int) -> torch.Tensor:
        return torch.empty(size, dtype=self.dtype, pin_memory=self.pinned)

    def reserve(self, size: int) -> np.ndarray:
        """A numpy view of at least `size` elements, safe to write (its last copy has finished)."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        if size > self.tensor.numel():
            self.tensor = self._allocate(max(size, 2 * self.tensor.numel()))
        return self.tensor.numpy()


class HostStaging:
    """Uploads lists of ints to `device` as views of one tensor per call (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.is_cuda = device.type == "cuda"
        self._buffers = {
            dtype: [_HostBuffer(dtype, self.is_cuda) for _ in range(2 if self.is_cuda else 0)]
            for dtype in NUMPY
        }
        self._turn = dict.fromkeys(NUMPY, 0)

    def upload(self, parts: Sequence[Sequence[int]], dtype: torch.dtype) -> list[torch.Tensor]:
        """One 1-D tensor of `dtype` on the device per part, all views of one allocation."""
        sizes = [len(part) for part in parts]
        total = sum(sizes)
        if not self.is_cuda:  # a fresh tensor: cached per-batch values may keep referring to it
            packed = torch.from_numpy(_pack(np.empty(total, dtype=NUMPY[dtype]), parts))
            return _split(packed, sizes)
        buffers = self._buffers[dtype]
        buffer = buffers[self._turn[dtype]]
        self._turn[dtype] = (self._turn[dtype] + 1) % len(buffers)
        _pack(buffer.reserve(total), parts)
        packed = torch.empty(total, dtype=dtype, device=self.device)
        packed.copy_(buffer.tensor[:total], non_blocking=True)
        buffer.event = torch.cuda.Event()
        buffer.event.record(torch.cuda.current_stream(self.device))
        return _split(packed, sizes)


def _pack(host: np.ndarray, parts: Sequence[Sequence[int]]) -> np.ndarray:
    offset = 0
    for part in parts:
        host[offset : offset + len(part)] = part
        offset += len(part)
    return host


def _split(packed: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    views, offset = [], 0
    for size in sizes:
        views.append(packed[offset : offset + size])
        offset += size
    return views
