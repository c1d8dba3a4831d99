"""Random multi-LoRA problems with real padding: each slot has its own true rank <= R."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

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
