"""The modules of each architecture that can carry LoRA, by their real (Hugging Face) names.

PEFT matches `target_modules`, `layers_to_transform`, `rank_pattern` and `alpha_pattern` against
the full module names of the transformers model (`model.layers.1.mlp.down_proj`,
`model.layers.0.block_sparse_moe.experts.3.w1`), so the adapter loader needs exactly those names,
with each module's shape and the projection group whose per-step slot map serves it. Every
`nn.Linear` of the supported architectures except `lm_head` is listed (what PEFT's
`all-linear` selects); `UNSUPPORTED` names modules PEFT could target that the runtime cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafleet.runtime.models.args import ModelArgs

# Groups: layers whose LoRA the runner prepares together each step (one slot map per group).
ATTENTION_GROUPS = ("qkv", "o")
MLP_GROUPS = ("gate_up", "down")
MOE_GROUPS = ("router", "experts")


@dataclass(frozen=True)
class LoraTarget:
    name: str  # full module name, e.g. "model.layers.1.mlp.down_proj"
    layer: int
    group: str
    out_features: int
    in_features: int


def lora_targets(args: ModelArgs) -> dict[str, LoraTarget]:
    """Every LoRA-targetable module of the architecture, by full name, in model order."""
    targets: dict[str, LoraTarget] = {}

    def add(layer: int, name: str, group: str, out_features: int, in_features: int) -> None:
        full = f"model.layers.{layer}.{name}"
        targets[full] = LoraTarget(full, layer, group, out_features, in_features)

    h, i = args.hidden_size, args.intermediate_size
    q, kv = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
    for layer in range(args.num_layers):
        if args.fused_qkv:
            add(layer, "self_attn.qkv_proj", "qkv", q + 2 * kv, h)
        else:
            for name, width in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                add(layer, f"self_attn.{name}", "qkv", width, h)
        add(layer, "self_attn.o_proj", "o", h, q)
        if args.is_moe:
            add(layer, "block_sparse_moe.gate", "router", args.num_experts, h)
            for expert in range(args.num_experts):
                prefix = f"block_sparse_moe.experts.{expert}"
                add(layer, f"{prefix}.w1", "experts", i, h)
                add(layer, f"{prefix}.w2", "experts", h, i)
                add(layer, f"{prefix}.w3", "experts", i, h)
        elif args.fused_gate_up:
            add(layer, "mlp.gate_up_proj", "gate_up", 2 * i, h)
            add(layer, "mlp.down_proj", "down", h, i)
        else:
            add(layer, "mlp.gate_proj", "gate_up", i, h)
            add(layer, "mlp.up_proj", "gate_up", i, h)
            add(layer, "mlp.down_proj", "down", h, i)
    return targets


def lora_groups(args: ModelArgs) -> tuple[str, ...]:
    """The architecture's projection groups, in model order."""
    return ATTENTION_GROUPS + (MOE_GROUPS if args.is_moe else MLP_GROUPS)


# Modules of every supported architecture that PEFT can wrap (embeddings, the LM head) but whose
# LoRA the runtime does not apply: an adapter targeting them is refused, never served without them.
UNSUPPORTED = ("model.embed_tokens", "lm_head")
