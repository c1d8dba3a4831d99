"""The decoder-only transformer shared by Llama, Mistral and Qwen2 (they differ only in config).

RMSNorm, RoPE, grouped-query attention over the paged cache, SwiGLU. q/k/v are fused into one
`LoRALinear` (three slices) and gate/up into another (two slices), so the base matmuls are few
and every projection can carry LoRA.
"""

from __future__ import annotations

import torch
from lorafleet.runtime.layers.attention import AttentionMetadata, paged_attention
from lorafleet.runtime.layers.lora_linear import LoRALinear, LoraStep
from lorafleet.runtime.layers.rotary import RotaryEmbedding
from lorafleet.runtime.models.args import LoraCapacity, ModelArgs
from torch import nn

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_GROUP_OF = {  # the fused LoRALinear each projection lives in
    "q_proj": "qkv",
    "k_proj": "qkv",
    "v_proj": "qkv",
    "o_proj": "o",
    "gate_proj": "gate_up",
    "up_proj": "gate_up",
    "down_proj": "down",
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, dim]
        hidden = x.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, lora: LoraCapacity, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.args = args
        q, kv = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        common = {"max_loras": lora.max_loras, "max_rank": lora.max_rank, "dtype": dtype, "device": device}
        self.qkv_proj = LoRALinear(
            args.hidden_size,
            (("q_proj", q), ("k_proj", kv), ("v_proj", kv)),
            group="qkv",
            bias=args.attention_bias,
            **common,
        )
        self.o_proj = LoRALinear(q, (("o_proj", args.hidden_size),), group="o", bias=False, **common)
        self.rotary = RotaryEmbedding(args.head_dim, args.rope_theta, args.rope_scaling).to(device)
        self.scale = args.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        positions: torch.Tensor,  # [T]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, KVH, D]
        meta: AttentionMetadata,
        lora: LoraStep | None,
    ) -> torch.Tensor:
        a = self.args
        qkv = self.qkv_proj(x, lora)
        q_size, kv_size = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        q = qkv[:, :q_size].reshape(-1, a.num_heads, a.head_dim)
        k = qkv[:, q_size : q_size + kv_size].reshape(-1, a.num_kv_heads, a.head_dim)
        v = qkv[:, q_size + kv_size :].reshape(-1, a.num_kv_heads, a.head_dim)
        q, k = self.rotary(positions, q, k)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, a.sliding_window)
        return self.o_proj(out.reshape(-1, q_size), lora)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, lora: LoraCapacity, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        common = {"max_loras": lora.max_loras, "max_rank": lora.max_rank, "dtype": dtype, "device": device}
        i = args.intermediate_size
        self.gate_up_proj = LoRALinear(
            args.hidden_size, (("gate_proj", i), ("up_proj", i)), group="gate_up", bias=False, **common
        )
        self.down_proj = LoRALinear(i, (("down_proj", args.hidden_size),), group="down", bias=False, **common)
        self.intermediate_size = i

    def forward(self, x: torch.Tensor, lora: LoraStep | None) -> torch.Tensor:
        gate_up = self.gate_up_proj(x, lora)
        gate, up = gate_up[:, : self.intermediate_size], gate_up[:, self.intermediate_size :]
        return self.down_proj(torch.nn.functional.silu(gate) * up, lora)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, lora: LoraCapacity, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)
        self.self_attn = Attention(args, lora, dtype, device)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)
        self.mlp = MLP(args, lora, dtype, device)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        lora: LoraStep | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, kv_cache, meta, lora)
        return x + self.mlp(self.post_attention_layernorm(x), lora)


class DecoderModel(nn.Module):
    """Embeddings, layers, final norm and LM head; `forward` works on a flat batch of tokens."""

    def __init__(self, args: ModelArgs, lora: LoraCapacity, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.args = args
        self.dtype = dtype
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size, dtype=dtype, device=device)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(args, lora, dtype, device) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, device)
        if args.tie_word_embeddings:
            self.lm_head_weight = self.embed_tokens.weight
        else:
            self.lm_head_weight = nn.Parameter(
                torch.empty(args.vocab_size, args.hidden_size, dtype=dtype, device=device),
                requires_grad=False,
            )

    def lora_linear(self, layer: int, module: str) -> LoRALinear:
        """The `LoRALinear` holding projection `module` of layer `layer`."""
        block = self.layers[layer]
        assert isinstance(block, DecoderLayer)
        attn, mlp = block.self_attn, block.mlp
        owners = {
            "q_proj": attn.qkv_proj,
            "k_proj": attn.qkv_proj,
            "v_proj": attn.qkv_proj,
            "o_proj": attn.o_proj,
            "gate_proj": mlp.gate_up_proj,
            "up_proj": mlp.gate_up_proj,
            "down_proj": mlp.down_proj,
        }
        return owners[module]

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, KVH, D]
        meta: AttentionMetadata,
        lora: LoraStep | None,
    ) -> torch.Tensor:  # [T, hidden], after the final norm
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, kv_caches[i], meta, lora)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, V] float32
        return torch.nn.functional.linear(hidden, self.lm_head_weight).float()
