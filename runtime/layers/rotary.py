"""Rotary position embeddings as transformers computes them: `default`, `linear`, Llama 3's
`llama3` and Phi-3's `longrope` scaling, on all of each head or its first part (`partial_rotary_factor`).

LongRoPE has two sets of frequencies: `short_factor` up to `original_max_position_embeddings` and
`long_factor` beyond, and scales cos/sin by an attention factor. transformers picks the set per
forward call from the largest position in it (a call that reaches past the original length uses
the long set for all its tokens, and the keys cached earlier keep the short one); we pick it per
token by its own position, so every token is rotated as in a transformers run that cached it the
same way. Both agree for every sequence within the original length (the tests' case).

On CUDA (with the Triton backend, `kernels.fused.fused_layers`) q and k are rotated in place by
one fused kernel that computes cos/sin itself, rounded as this code rounds them
(`lorafleet.kernels.fused_rotary`). On the CPU, fp32 q and k of a full-width rotation go through
the CPU kernels where `make setup` built them (`kernels/native_cpu.py`: the same products and sums,
bit for bit, in one pass); elsewhere the eager code below runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
from lorafleet.kernels import native_cpu
from lorafleet.kernels.fused import fused_layers
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")


def rope_type_of(scaling: Mapping[str, Any] | None) -> str:
    scaling = scaling or {}
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in float32 (the short set for longrope)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    rope_type = rope_type_of(scaling)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope_scaling type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})"
        )
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])  # type: ignore[index]
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)  # type: ignore[arg-type]
    if rope_type == "longrope":
        return longrope_inv_freq(head_dim, theta, scaling, long=False)  # type: ignore[arg-type]
    return inv_freq


def longrope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any], *, long: bool) -> torch.Tensor:
    factors = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
    if factors.numel() != head_dim // 2:
        raise ValueError(f"longrope factors have {factors.numel()} values, expected {head_dim // 2}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (factors * theta**exponents)


def longrope_attention_factor(scaling: Mapping[str, Any]) -> float:
    """cos/sin scale: given, or sqrt(1 + ln(s) / ln(original)) with s = max / original positions."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    original = float(scaling["original_max_position_embeddings"])
    factor = float(scaling["max_position_embeddings"]) / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: Mapping[str, Any]) -> torch.Tensor:
    # Low frequencies are divided by `factor`, high ones kept, the band between interpolated.
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _tables(
    positions: torch.Tensor, inv_freq: torch.Tensor, factor: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:  # [T, 1, R] each
    freqs = positions.float()[:, None] * inv_freq  # [T, R/2], float32 as HF
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * factor).to(dtype)[:, None, :], (emb.sin() * factor).to(dtype)[:, None, :]


def _cpu_kernel(q: torch.Tensor, k: torch.Tensor) -> ModuleType | None:
    """The CPU kernels where built and q, k are theirs: fp32 on the CPU, each head's values contiguous."""
    if q.device.type != "cpu" or q.dtype != torch.float32 or k.dtype != torch.float32:
        return None
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        return None
    return native_cpu.norm_rope_kernel()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """Applies RoPE (the non-interleaved "rotate half" layout of HF checkpoints) by position."""

    inv_freq: torch.Tensor  # [rotary_dim // 2] float32
    long_inv_freq: torch.Tensor  # longrope only: the set for positions past `long_from`

    def __init__(
        self,
        head_dim: int,
        theta: float,
        scaling: Mapping[str, Any] | None,
        partial_rotary_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.rotary_dim = int(head_dim * partial_rotary_factor)
        self.register_buffer("inv_freq", rope_inv_freq(self.rotary_dim, theta, scaling), persistent=False)
        self.long_from: int | None = None
        self.attention_factor = 1.0
        # Equal keys give equal tables: layers with equal keys share one module (and its tables).
        self.key = (self.rotary_dim, theta, repr(sorted((scaling or {}).items())))
        # This step's (positions, dtype, cos, sin): every layer sharing this module reuses them.
        # The model forgets them as each step begins (`forget_tables`): its positions tensor may
        # be a static buffer refilled in place. One tuple, read once, so two engines' threads
        # sharing the module never mix their tables.
        self._tables: tuple[torch.Tensor, torch.dtype, torch.Tensor, torch.Tensor] | None = None
        if scaling is not None and rope_type_of(scaling) == "longrope":
            long = longrope_inv_freq(self.rotary_dim, theta, scaling, long=True)
            self.register_buffer("long_inv_freq", long, persistent=False)
            self.long_from = int(scaling["original_max_position_embeddings"])
            self.attention_factor = longrope_attention_factor(scaling)

    def forward(
        self,
        positions: torch.Tensor,  # [T] int64
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, KVH, D]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if q.is_cuda and fused_layers(q.device):  # built before its device is known: decided per call
            return self._fused(positions, q, k)
        cos, sin = self._cos_sin(positions, q.dtype)
        if self.rotary_dim == q.shape[-1]:
            kernel = _cpu_kernel(q, k)
            if kernel is not None:  # the same products and sums, bit for bit, in one pass
                q_out, k_out = torch.empty(q.shape, dtype=q.dtype), torch.empty(k.shape, dtype=k.dtype)
                kernel.rotary(q_out, k_out, q, k, cos, sin)
                return q_out, k_out
            return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        r = self.rotary_dim
        q_rot, k_rot = q[..., :r], k[..., :r]
        q = torch.cat((q_rot * cos + _rotate_half(q_rot) * sin, q[..., r:]), dim=-1)
        k = torch.cat((k_rot * cos + _rotate_half(k_rot) * sin, k[..., r:]), dim=-1)
        return q, k

    def forget_tables(self) -> None:
        self._tables = None

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [T, 1, R] of `positions`, computed once per step (the runner builds one
        positions tensor per step, shared by every layer)."""
        tables = self._tables
        if tables is not None and tables[0] is positions and tables[1] == dtype:
            return tables[2], tables[3]
        inv_freq = self.inv_freq[None, :]  # [1, R/2]
        if self.long_from is not None:
            inv_freq = torch.where((positions >= self.long_from)[:, None], self.long_inv_freq, inv_freq)
        cos, sin = _tables(positions, inv_freq, self.attention_factor, dtype)
        self._tables = (positions, dtype, cos, sin)
        return cos, sin

    def _fused(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # q, k rotated in place
        from lorafleet.kernels import fused_rotary

        return fused_rotary.rotary_embedding(
            positions, q, k, self.inv_freq,
            long_inv_freq=self.long_inv_freq if self.long_from is not None else None,
            long_from=self.long_from or 0, attention_factor=self.attention_factor,
        )
