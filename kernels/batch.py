"""Per-step segment metadata: which rows of the batch belong to which adapter slot.

Built once per engine step by `prepare_lora_batch` and reused by every LoRA layer of that
step. Tokens are grouped by slot with a stable sort (tokens with slot -1 go last and are never
touched), and each slot's rows are cut into tiles of at most `block_m` rows. The tile list has
a fixed length that depends only on (num_tokens, num_slots, block_m), so the Triton grid never
needs the host to know how many adapters are really present; unused tiles carry slot -1 and
their programs return at once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from lorafleet.kernels.errors import LoraKernelError

DECODE_BLOCK_M = 16  # smallest tl.dot tile: decode batches have 1..few tokens per adapter
PREFILL_BLOCK_M = 64
_Derived = TypeVar("_Derived")
DECODE_MAX_TOKENS = 256  # batches up to this many tokens use the decode tile


@dataclass(frozen=True)
class LoraBatch:
    """Segment metadata of one batch; build it with `prepare_lora_batch`, never by hand.

    Attributes:
        num_tokens: T, rows of the batch.
        num_slots: L, adapter slots of the stacked weights this batch was checked against.
        block_m: rows per tile.
        sorted_tokens: [T] int32, token indices grouped by slot (stable), slot -1 tokens last.
        slot_starts: [L] int64, offset of each slot's first row in `sorted_tokens`.
        slot_counts: [L] int64, number of tokens of each slot.
        tile_slot: [num_tiles] int32, slot of each tile; -1 marks an unused tile.
        tile_start: [num_tiles] int32, first row (into `sorted_tokens`) of each tile.
        tile_end: [num_tiles] int32, one past the last row of each tile.
        has_lora_tokens: False only when it is known that no token uses an adapter.
        num_active_tokens: tokens with a slot in [0, L), read at the validation sync; None when
            built with `validate=False`.
        num_active_slots: distinct slots present (D), likewise; None when not validated.
        token_lora: [T] the slots the batch was built from (the CPU path's gathered form reads them).
    """

    num_tokens: int
    num_slots: int
    block_m: int
    sorted_tokens: torch.Tensor
    slot_starts: torch.Tensor
    slot_counts: torch.Tensor
    tile_slot: torch.Tensor
    tile_start: torch.Tensor
    tile_end: torch.Tensor
    has_lora_tokens: bool
    num_active_tokens: int | None = None
    num_active_slots: int | None = None
    token_lora: torch.Tensor | None = field(default=None, compare=False)
    # Values derived from this batch by the first layer that needs them (the CPU path's row
    # lists and bag indices), reused by every later layer of the step. Not part of equality.
    _derived: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def derived(self, key: Hashable, build: Callable[..., _Derived], *args: Any) -> _Derived:
        """`build(*args)`, computed on the first call with `key` and returned as is afterwards.

        For per-step values that depend only on this batch (e.g. index tensors built from the
        slots), so a step of many layers builds them once. `key` must name everything `build`
        depends on beyond the batch itself.

        Example:
            >>> rows = meta.derived(("active_rows", n), lambda: meta.sorted_tokens[:n].long())
        """
        if key not in self._derived:
            self._derived[key] = build(*args)
        return self._derived[key]

    @property
    def num_tiles(self) -> int:
        return self.tile_slot.numel()

    @property
    def device(self) -> torch.device:
        return self.sorted_tokens.device


def default_block_m(num_tokens: int) -> int:
    """Rows per tile: small tiles for decode (few tokens per adapter), wide ones for prefill."""
    return DECODE_BLOCK_M if num_tokens <= DECODE_MAX_TOKENS else PREFILL_BLOCK_M


def max_tiles(num_tokens: int, num_slots: int, block_m: int) -> int:
    """Upper bound of sum over slots of ceil(count / block_m): each present slot adds at most one
    partial tile to the floor(T / block_m) full ones."""
    return num_tokens // block_m + min(num_slots, num_tokens)


def prepare_lora_batch(
    token_lora: torch.Tensor,  # [T] int, -1 = no adapter
    num_slots: int,
    *,
    block_m: int | None = None,
    validate: bool = True,
) -> LoraBatch:
    """Groups the tokens of one step by adapter slot, for every LoRA layer of that step.

    Args:
        token_lora: [T] integer tensor, the adapter slot of each token, -1 for none. Any order.
        num_slots: L, the number of slots of the stacked LoRA weights (`lora_a.shape[0]`).
        block_m: rows per tile; default 16 for T <= 256 (decode) and 64 above (prefill).
        validate: check that every slot is in [-1, L) and note whether any token uses an
            adapter. This is the only host synchronisation; pass False inside CUDA graph capture
            (an out-of-range slot is then silently skipped by the kernels).

    Returns:
        A frozen `LoraBatch` on `token_lora`'s device.

    Raises:
        LoraKernelError (a ValueError): bad shape or dtype, or a slot out of range.

    Example:
        >>> meta = prepare_lora_batch(torch.tensor([2, -1, 0, 2]), num_slots=4)
        >>> meta.sorted_tokens.tolist()
        [2, 0, 3, 1]
    """
    if token_lora.dim() != 1:
        raise LoraKernelError(f"token_lora must be 1-D [T], got shape {tuple(token_lora.shape)}")
    if token_lora.dtype.is_floating_point or token_lora.dtype in (torch.bool, torch.complex64):
        raise LoraKernelError(f"token_lora must be an integer tensor, got {token_lora.dtype}")
    if num_slots < 1:
        raise LoraKernelError(f"num_slots must be >= 1, got {num_slots}")
    num_tokens = token_lora.numel()
    block_m = block_m or default_block_m(num_tokens)
    if block_m < 16 or block_m & (block_m - 1):
        raise LoraKernelError(f"block_m must be a power of two >= 16, got {block_m}")
    meta = _build(token_lora, num_slots, block_m, has_lora_tokens=num_tokens > 0)
    if not validate or num_tokens == 0:
        return meta
    # The one host sync: the range check, plus the active token and slot counts (reused by the
    # CPU path to choose between its grouped and gathered forms without a sync per layer).
    counts = meta.slot_counts  # [L]
    lowest, highest, num_active, num_present = torch.stack(
        [token_lora.min().long(), token_lora.max().long(), counts.sum(), (counts > 0).sum()]
    ).tolist()
    if lowest < -1 or highest >= num_slots:
        raise LoraKernelError(
            f"token_lora values must lie in [-1, {num_slots}) for {num_slots} slots; "
            f"got min {lowest}, max {highest} (token_lora shape {tuple(token_lora.shape)})"
        )
    return replace(
        meta, has_lora_tokens=num_active > 0, num_active_tokens=num_active, num_active_slots=num_present
    )


def _build(token_lora: torch.Tensor, num_slots: int, block_m: int, has_lora_tokens: bool) -> LoraBatch:
    device = token_lora.device
    num_tokens = token_lora.numel()
    # Slot -1 (and anything out of range when unvalidated) sorts after every real slot.
    in_range = (token_lora >= 0) & (token_lora < num_slots)
    key = torch.where(in_range, token_lora.long(), torch.full_like(token_lora, num_slots, dtype=torch.long))
    order = torch.sort(key, stable=True).indices  # [T]
    # scatter_add, not bincount: bincount syncs with the host on CUDA to size its output.
    counts = torch.zeros(num_slots + 1, dtype=torch.long, device=device)
    counts = counts.scatter_add_(0, key, torch.ones_like(key))[:num_slots]  # [L]
    starts = torch.cumsum(counts, 0) - counts  # [L]
    tiles_per_slot = (counts + block_m - 1) // block_m  # [L]
    tiles_end = torch.cumsum(tiles_per_slot, 0)  # [L]
    tile_ids = torch.arange(max_tiles(num_tokens, num_slots, block_m), device=device)
    slot = torch.searchsorted(tiles_end, tile_ids, right=True)  # [num_tiles]; == L past the end
    used = slot < num_slots
    slot_c = slot.clamp(max=num_slots - 1)
    tile_start = starts[slot_c] + (tile_ids - (tiles_end - tiles_per_slot)[slot_c]) * block_m
    tile_end = torch.minimum(tile_start + block_m, starts[slot_c] + counts[slot_c])
    return LoraBatch(
        num_tokens=num_tokens,
        num_slots=num_slots,
        block_m=block_m,
        sorted_tokens=order.to(torch.int32),
        slot_starts=starts,
        slot_counts=counts,
        tile_slot=torch.where(used, slot, -1).to(torch.int32),
        tile_start=torch.where(used, tile_start, 0).to(torch.int32),
        tile_end=torch.where(used, tile_end, 0).to(torch.int32),
        has_lora_tokens=has_lora_tokens,
        token_lora=token_lora,
    )
