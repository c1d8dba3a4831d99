"""Random multi-LoRA problems: stacked with real padding (each slot its own true rank <= R), and paged."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from lorafleet import kernels
from lorafleet.kernels import (
    PAGE_RANK,
    AdapterPages,
    LoraBatch,
    build_adapter_pages,
    pages_for_rank,
    reference,
)

# Max |kernel - reference| <= ATOL + RTOL * |reference|. fp16/bf16: the kernels and the reference
# both round once, from fp32 sums taken in different orders, so one ulp apart at most; on the CPU
# interpreter fp32 -> bf16 truncates instead of rounding (one more ulp). Values are O(1).
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@dataclass(frozen=True)
class LoraCase:
    out: torch.Tensor  # [T, N]
    x: torch.Tensor  # [T, K]
    lora_a: torch.Tensor  # [L, S, R, K]
    lora_b: torch.Tensor  # [L, N, R]
    token_lora: torch.Tensor  # [T]
    scales: torch.Tensor  # [S, L] or [L]
    slice_widths: tuple[int, ...]

    @property
    def single(self) -> tuple[torch.Tensor, ...]:
        """Arguments of `add_lora` (one slice), with a fresh copy of out."""
        assert len(self.slice_widths) == 1
        return (self.out.clone(), self.x, self.lora_a[:, 0], self.lora_b, self.token_lora, self.scales)


def make_case(
    token_lora: list[int] | torch.Tensor,
    *,
    hidden_in: int,
    slice_widths: tuple[int, ...],
    ranks: list[int],  # true rank of each slot; R = max(ranks)
    dtype: torch.dtype,
    device: torch.device,
    per_slice_scales: bool = False,
    seed: int = 0,
) -> LoraCase:
    gen = torch.Generator().manual_seed(seed)
    token_lora = torch.as_tensor(token_lora, dtype=torch.long)
    num_tokens, num_slots, num_slices = token_lora.numel(), len(ranks), len(slice_widths)
    max_rank, hidden_out = max(ranks), sum(slice_widths)
    lora_a = torch.zeros(num_slots, num_slices, max_rank, hidden_in)
    lora_b = torch.zeros(num_slots, hidden_out, max_rank)
    for slot, rank in enumerate(ranks):
        lora_a[slot, :, :rank] = torch.randn(num_slices, rank, hidden_in, generator=gen) / hidden_in**0.5
        lora_b[slot, :, :rank] = torch.randn(hidden_out, rank, generator=gen) / rank**0.5
    scale_shape = (num_slices, num_slots) if per_slice_scales else (num_slots,)
    return LoraCase(
        out=torch.randn(num_tokens, hidden_out, generator=gen).to(dtype).to(device),
        x=torch.randn(num_tokens, hidden_in, generator=gen).to(dtype).to(device),
        lora_a=lora_a.to(dtype).to(device),
        lora_b=lora_b.to(dtype).to(device),
        token_lora=token_lora.to(device),
        scales=(0.5 + torch.rand(scale_shape, generator=gen)).to(device),
        slice_widths=slice_widths,
    )


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@contextlib.contextmanager
def forced_backend(name: str) -> Iterator[None]:
    """LORAFLEET_KERNELS=name inside the block (for hypothesis tests, which cannot use monkeypatch)."""
    previous = os.environ.get("LORAFLEET_KERNELS")
    os.environ["LORAFLEET_KERNELS"] = name
    try:
        yield
    finally:
        if previous is None:
            del os.environ["LORAFLEET_KERNELS"]
        else:
            os.environ["LORAFLEET_KERNELS"] = previous


@dataclass(frozen=True)
class PagedCase:
    """A paged problem: slot weights scattered over a pool whose other rows hold NaN."""

    out: torch.Tensor  # [T, N]
    x: torch.Tensor  # [T, K]
    a_pages: torch.Tensor  # [P, S, PR, K]
    b_pages: torch.Tensor  # [P, N, PR]
    token_lora: torch.Tensor  # [T]
    scales: torch.Tensor  # [S, L] or [L]
    pages: AdapterPages
    slice_widths: tuple[int, ...]

    def expected(self) -> torch.Tensor:
        """The per-token paged reference, on a fresh copy of out."""
        return reference.add_lora_paged(self.out.clone(), self.x, self.a_pages, self.b_pages, self.token_lora,
                                        self.scales, self.pages.page_table, self.pages.ranks,
                                        self.slice_widths)

    def run(self, meta: LoraBatch | None = None) -> torch.Tensor:
        """The public `add_lora_paged` on a fresh copy of out."""
        return kernels.add_lora_paged(self.out.clone(), self.x, self.a_pages, self.b_pages, self.token_lora,
                                      self.scales, pages=self.pages, slice_widths=self.slice_widths,
                                      meta=meta)


def make_paged_case(
    token_lora: list[int] | torch.Tensor,
    *,
    hidden_in: int,
    slice_widths: tuple[int, ...],
    ranks: list[int],  # true rank of each slot, 0 = empty
    dtype: torch.dtype,
    device: torch.device,
    per_slice_scales: bool = False,
    seed: int = 0,
    spare_pages: int = 3,  # pool pages no slot uses
    scattered: bool = True,  # pages in a random order; else each slot's pages consecutive
    row_layout: bool = False,  # store A [P, K, S, PR] and B [P, PR, N], as the CPU engine does
    max_pages: int | None = None,
) -> PagedCase:
    """Random adapters of the given ranks placed in pages; unused pages and the rows past each
    slot's rank inside its last page are NaN, so reading any of them shows in the result."""
    gen = torch.Generator().manual_seed(seed)
    token_lora = torch.as_tensor(token_lora, dtype=torch.long)
    num_slices, hidden_out = len(slice_widths), sum(slice_widths)
    held = [pages_for_rank(rank) for rank in ranks]
    num_pages = sum(held) + spare_pages
    shuffle = torch.Generator().manual_seed(seed + 1)  # its own stream: the weights do not depend on it
    order = torch.randperm(num_pages, generator=shuffle).tolist() if scattered else list(range(num_pages))
    slot_pages, next_page = [], 0
    for count in held:
        slot_pages.append(order[next_page : next_page + count])
        next_page += count
    a_pages = torch.full((num_pages, num_slices, PAGE_RANK, hidden_in), float("nan"))
    b_pages = torch.full((num_pages, hidden_out, PAGE_RANK), float("nan"))
    for rank, placed in zip(ranks, slot_pages, strict=True):
        a = torch.randn(num_slices, rank, hidden_in, generator=gen) / hidden_in**0.5  # [S, r, K]
        b = torch.randn(hidden_out, rank, generator=gen) / max(rank, 1) ** 0.5  # [N, r]
        for rho in range(rank):
            a_pages[placed[rho // PAGE_RANK], :, rho % PAGE_RANK] = a[:, rho]
            b_pages[placed[rho // PAGE_RANK], :, rho % PAGE_RANK] = b[:, rho]
    if row_layout:  # same values, stored transposed and seen through the API shapes
        a_pages = a_pages.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        b_pages = b_pages.transpose(1, 2).contiguous().transpose(1, 2)
    width = max_pages or max(max(held), 1)
    scale_shape = (num_slices, len(ranks)) if per_slice_scales else (len(ranks),)
    return PagedCase(
        out=torch.randn(token_lora.numel(), hidden_out, generator=gen).to(dtype).to(device),
        x=torch.randn(token_lora.numel(), hidden_in, generator=gen).to(dtype).to(device),
        a_pages=a_pages.to(dtype).to(device),
        b_pages=b_pages.to(dtype).to(device),
        token_lora=token_lora.to(device),
        scales=(0.5 + torch.rand(scale_shape, generator=gen)).to(device),
        pages=build_adapter_pages(slot_pages, ranks, max_pages=width, device=device),
        slice_widths=slice_widths,
    )


def stacked_equivalent(case: PagedCase) -> tuple[torch.Tensor, torch.Tensor]:
    """The same adapters as stacked [L, S, R, K] / [L, N, R] weights, zero-padded to the largest rank."""
    ranks = case.pages.slot_ranks
    max_rank = max(max(ranks), 1)
    num_slices, hidden_in = case.a_pages.shape[1], case.a_pages.shape[3]
    lora_a = torch.zeros(len(ranks), num_slices, max_rank, hidden_in, dtype=case.a_pages.dtype)
    lora_b = torch.zeros(len(ranks), case.b_pages.shape[1], max_rank, dtype=case.b_pages.dtype)
    for slot, (rank, placed) in enumerate(zip(ranks, case.pages.slot_pages, strict=True)):
        for rho in range(rank):
            lora_a[slot, :, rho] = case.a_pages[placed[rho // PAGE_RANK], :, rho % PAGE_RANK].cpu()
            lora_b[slot, :, rho] = case.b_pages[placed[rho // PAGE_RANK], :, rho % PAGE_RANK].cpu()
    return lora_a.to(case.x.device), lora_b.to(case.x.device)
