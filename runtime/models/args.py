"""`ModelArgs`: the architecture of a checkpoint, read once from its config.json (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelArgs:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # Qwen2: q/k/v carry a bias
    sliding_window: int | None

    def module_shape(self, module: str) -> tuple[int, int]:
        """(out_features, in_features) of a LoRA-targetable projection."""
        q, kv, h, i = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.hidden_size,
            (self.intermediate_size),
        )
        shapes = {
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, q),
            "gate_proj": (i, h),
            "up_proj": (i, h),
            "down_proj": (h, i),
        }
        return shapes[module]


@dataclass(frozen=True)
class LoraCapacity:
    max_loras: int  # adapter slots
    max_rank: int
