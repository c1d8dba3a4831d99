"""Whether the runtime's RMSNorm and RoPE run as fused Triton kernels, decided once per device.

They do on CUDA when the LoRA backend is Triton (`LORAFLEET_KERNELS` unset or `triton`);
`LORAFLEET_KERNELS=torch` turns them off with the rest of the Triton path. The kernels themselves
live in `fused_norm.py` and `fused_rotary.py` (imported late: TRITON_INTERPRET is read when a
kernel is decorated).
"""

from __future__ import annotations

import functools

import torch
from lorafleet.kernels.backend import backend_for


@functools.lru_cache(maxsize=8)
def fused_layers(device: torch.device) -> bool:
    """True when layers on `device` should call the fused norm and rotary kernels."""
    return device.type == "cuda" and backend_for(device).name == "triton"
