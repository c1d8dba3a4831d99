"""`ModelArgs`: the architecture of a checkpoint, read once from its config.json (no torch here).

One dataclass describes every supported family: the shared decoder (`decoder.py`) is Llama's, and
each field below the first block names one variation of it and the families that use it. The
per-family readers (`llama.py`, `gemma2.py`, ...) fill it from config.json.
"""

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
    attention_bias: bool = False  # Qwen2: q/k/v carry a bias
    layer_windows: tuple[int | None, ...] = ()  # sliding window per layer (None: full); () = all full
    hidden_act: str = "silu"  # MLP gate activation: "silu" or "gelu_pytorch_tanh" (Gemma)
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over each head of q and k, before RoPE
    norm_offset: float = 0.0  # Gemma: RMSNorm scales by (1 + weight)
    sandwich_norms: bool = False  # Gemma 2/3: norm after attention, and before and after the MLP
    embedding_scale: float | None = None  # Gemma: embeddings multiplied by sqrt(hidden_size)
    attention_scale: float | None = None  # default head_dim**-0.5; Gemma: query_pre_attn_scalar**-0.5
    attn_logit_softcap: float | None = None  # Gemma 2: scores -> cap * tanh(scores / cap)
    final_logit_softcap: float | None = None  # Gemma 2: the same on the LM head's logits
    local_rope_theta: float | None = None  # Gemma 3: RoPE base of the sliding layers (no scaling)
    partial_rotary_factor: float = 1.0  # Phi-4-mini: RoPE on the first fraction of each head
    fused_qkv: bool = False  # Phi-3: one qkv_proj in the checkpoint and in PEFT adapters
    fused_gate_up: bool = False  # Phi-3: one gate_up_proj likewise
    num_experts: int = 0  # Mixtral: a sparse MoE block of this many experts replaces the MLP
    num_experts_per_tok: int = 0  # Mixtral: experts each token is routed to (top-k)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def window(self, layer: int) -> int | None:
        """The sliding attention window of `layer`, None for full attention."""
        return self.layer_windows[layer] if self.layer_windows else None


@dataclass(frozen=True)
class LoraCapacity:
    max_loras: int  # adapter slots
    max_rank: int
    num_pages: int = 0  # pages per projection group's pool (the engine sizes it after the weights)
