"""The decoder-only transformer shared by every supported family (Llama's, with `ModelArgs` switches).

RMSNorm, RoPE, grouped-query attention over the paged cache, a gated MLP or a sparse MoE block.
q/k/v are fused into one `LoRALinear` and gate/up into another, so the base matmuls are few and
every projection can carry LoRA. The slices of a fused layer are the *checkpoint's and PEFT's*
modules: three (q_proj, k_proj, v_proj) for Llama, one (qkv_proj) for Phi-3, whose PEFT adapters
hold one A [r, hidden] and one B [q+k+v, r] for the fused module — a single-slice LoRA over the
fused output, computed exactly as PEFT computes it, never split into three.

Module attributes carry the Hugging Face names, so `checkpoint_tensors()` and `lora_sites` can
map checkpoint tensors and PEFT module names onto parameters and LoRA slots by path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from lorafleet.runtime.layers.attention import AttentionMetadata, paged_attention
from lorafleet.runtime.layers.dense import linear
from lorafleet.runtime.layers.lora_linear import LoRABuffers, LoRALinear, LoraStep
from lorafleet.runtime.layers.moe import ExpertsLinear, SparseMoE
from lorafleet.runtime.layers.norms import RMSNorm
from lorafleet.runtime.layers.rotary import RotaryEmbedding
from lorafleet.runtime.models.args import LoraCapacity, ModelArgs
from lorafleet.runtime.models.lora_targets import lora_groups, lora_targets
from torch import nn

if TYPE_CHECKING:
    from lorafleet.runtime.distributed.plan import ShardPlan

Reduce = Callable[[torch.Tensor], torch.Tensor]  # in-place all-reduce of a row-parallel output
ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


@dataclass(frozen=True)
class LoraSite:
    """Where a PEFT module's LoRA lives: a slice of a layer's LoRA pages (of one expert)."""

    holder: LoRABuffers
    slice_name: str
    group: str
    expert: int | None = None

    def write(
        self, slot: int, pages: tuple[int, ...], lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float
    ) -> None:
        """Writes the module's A [r, K] and B [N, r] for adapter `slot` into the group's `pages`
        (an expert's own slot and page instead: one fixed page per expert and slot)."""
        if self.expert is not None:
            assert isinstance(self.holder, ExpertsLinear)
            slot = self.holder.composite_slot(self.expert, slot)
            pages = (slot,)
        self.holder.write(slot, pages, self.slice_name, lora_a, lora_b, scale)


def _norm(args: ModelArgs, dim: int, dtype: torch.dtype, device: torch.device) -> RMSNorm:
    return RMSNorm(dim, args.rms_norm_eps, dtype, device, offset=args.norm_offset)


class Attention(nn.Module):
    def __init__(
        self, args: ModelArgs, layer: int, lora: LoraCapacity, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.args = args
        q, kv, d = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim, args.head_dim
        common = {"max_loras": lora.max_loras, "num_pages": lora.num_pages, "dtype": dtype, "device": device}
        slices = (
            (("qkv_proj", q + 2 * kv),) if args.fused_qkv else (("q_proj", q), ("k_proj", kv), ("v_proj", kv))
        )
        self.qkv_proj = LoRALinear(args.hidden_size, slices, group="qkv", bias=args.attention_bias, **common)
        self.o_proj = LoRALinear(q, (("o_proj", args.hidden_size),), group="o", bias=False, **common)
        self.q_norm = _norm(args, d, dtype, device) if args.qk_norm else None
        self.k_norm = _norm(args, d, dtype, device) if args.qk_norm else None
        self.window = args.window(layer)
        local = self.window is not None and args.local_rope_theta is not None
        theta, scaling = (args.local_rope_theta, None) if local else (args.rope_theta, args.rope_scaling)
        self.rotary = RotaryEmbedding(d, theta, scaling, args.partial_rotary_factor).to(device)  # type: ignore[arg-type]
        self.scale = args.attention_scale or d**-0.5
        self.reduce: Reduce | None = None  # sharded: sums o_proj's partial outputs over the shards

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
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = paged_attention(
            q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, self.window, a.attn_logit_softcap
        )
        out = self.o_proj(out.reshape(-1, q_size), lora)  # LoRA's delta included: reduced with it
        return out if self.reduce is None else self.reduce(out)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, lora: LoraCapacity, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        common = {"max_loras": lora.max_loras, "num_pages": lora.num_pages, "dtype": dtype, "device": device}
        i = args.intermediate_size
        slices = (("gate_up_proj", 2 * i),) if args.fused_gate_up else (("gate_proj", i), ("up_proj", i))
        self.gate_up_proj = LoRALinear(args.hidden_size, slices, group="gate_up", bias=False, **common)
        self.down_proj = LoRALinear(i, (("down_proj", args.hidden_size),), group="down", bias=False, **common)
        self.intermediate_size = i
        self.act = ACTIVATIONS[args.hidden_act]
        self.reduce: Reduce | None = None  # sharded: sums down_proj's partial outputs over the shards

    def forward(self, x: torch.Tensor, lora: LoraStep | None) -> torch.Tensor:
        gate_up = self.gate_up_proj(x, lora)
        gate, up = gate_up[:, : self.intermediate_size], gate_up[:, self.intermediate_size :]
        out = self.down_proj(self.act(gate) * up, lora)
        return out if self.reduce is None else self.reduce(out)


class DecoderLayer(nn.Module):
    def __init__(
        self, args: ModelArgs, layer: int, lora: LoraCapacity, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.input_layernorm = _norm(args, args.hidden_size, dtype, device)
        self.self_attn = Attention(args, layer, lora, dtype, device)
        self.post_attention_layernorm = _norm(args, args.hidden_size, dtype, device)
        self.sandwich = args.sandwich_norms
        if args.sandwich_norms:  # Gemma: post_attention_layernorm normalises the attention output
            self.pre_feedforward_layernorm = _norm(args, args.hidden_size, dtype, device)
            self.post_feedforward_layernorm = _norm(args, args.hidden_size, dtype, device)
        if args.is_moe:
            self.block_sparse_moe = SparseMoE(
                args.hidden_size,
                args.intermediate_size,
                args.num_experts,
                args.num_experts_per_tok,
                max_loras=lora.max_loras,
                max_rank=lora.max_rank,
                num_pages=lora.num_pages,
                dtype=dtype,
                device=device,
            )
        else:
            self.mlp = MLP(args, lora, dtype, device)
        self.is_moe = args.is_moe

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        lora: LoraStep | None,
    ) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), positions, kv_cache, meta, lora)
        feed_forward = self.block_sparse_moe if self.is_moe else self.mlp
        if not self.sandwich:
            x, normed = self.post_attention_layernorm.add_and_norm(x, attn)  # x + attn, then its norm
            return x + feed_forward(normed, lora)
        x = x + self.post_attention_layernorm(attn)
        ff = feed_forward(self.pre_feedforward_layernorm(x), lora)
        return x + self.post_feedforward_layernorm(ff)


class DecoderModel(nn.Module):
    """Embeddings, layers, final norm and LM head; `forward` works on a flat batch of tokens."""

    def __init__(self, args: ModelArgs, lora: LoraCapacity, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.args = args
        self.dtype = dtype
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size, dtype=dtype, device=device)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(
            DecoderLayer(args, i, lora, dtype, device) for i in range(args.num_layers)
        )
        self.norm = _norm(args, args.hidden_size, dtype, device)
        if args.tie_word_embeddings:
            self.lm_head_weight = self.embed_tokens.weight
        else:
            self.lm_head_weight = nn.Parameter(
                torch.empty(args.vocab_size, args.hidden_size, dtype=dtype, device=device),
                requires_grad=False,
            )
        shared: dict[tuple[object, ...], RotaryEmbedding] = {}  # one RoPE table per step for equal layers
        for layer in self.layers:
            assert isinstance(layer, DecoderLayer)
            attn = layer.self_attn
            attn.rotary = shared.setdefault(attn.rotary.key, attn.rotary)
        self.rotaries = list(shared.values())
        self.lora_groups = lora_groups(args)
        self.lora_holders = [m for m in self.modules() if isinstance(m, LoRABuffers)]
        self.lora_sites = self._lora_sites()
        # Set on a shard of a sharded model (`runtime/distributed`): its rank's slices of the
        # checkpoint and of every adapter; None on one device (nothing cut, nothing reduced).
        self.shard_plan: ShardPlan | None = None

    def install_reduce(self, plan: ShardPlan, reduce: Reduce) -> None:
        """Makes this model shard `plan.rank`: each attention and MLP block all-reduces its
        row-parallel output once (Megatron-LM's two collectives per layer)."""
        self.shard_plan = plan
        for layer in self.layers:
            assert isinstance(layer, DecoderLayer) and not layer.is_moe
            layer.self_attn.reduce = reduce
            layer.mlp.reduce = reduce

    @property
    def paged_holders(self) -> list[LoRALinear]:
        """The LoRA holders whose storage is paged by rank rows (every one but the MoE experts')."""
        return [holder for holder in self.lora_holders if isinstance(holder, LoRALinear)]

    def allocate_adapter_pages(self, num_pages: int) -> None:
        """Gives every paged holder a pool of `num_pages` empty pages (sized by the engine)."""
        for holder in self.paged_holders:
            holder.allocate_pages(num_pages, dtype=self.dtype, device=holder.weight.device)

    def dense_weights(self) -> list[torch.Tensor]:
        """The weights that go through `layers.dense.linear`: every base linear layer's and the LM head."""
        return [holder.weight for holder in self.paged_holders] + [self.lm_head_weight]

    def page_bytes(self) -> dict[str, int]:
        """Per projection group, the bytes of one page index across its layers."""
        costs: dict[str, int] = {}
        for holder in self.paged_holders:
            costs[holder.group] = costs.get(holder.group, 0) + holder.page_bytes
        return costs

    def _holders_by_parent(self) -> list[tuple[str, LoRABuffers]]:
        """(Hugging Face name of the holder's parent module, holder): ("model.layers.0.self_attn", qkv)."""
        return [
            (f"model.{path.rsplit('.', 1)[0]}", module)
            for path, module in self.named_modules()
            if isinstance(module, LoRABuffers)
        ]

    def _lora_sites(self) -> dict[str, LoraSite]:
        sites: dict[str, LoraSite] = {}
        for parent, holder in self._holders_by_parent():
            for name in holder.slice_index:
                if isinstance(holder, ExpertsLinear):
                    for expert in range(holder.num_experts):
                        sites[f"{parent}.experts.{expert}.{name}"] = LoraSite(holder, name, "experts", expert)
                else:
                    assert isinstance(holder, LoRALinear)
                    sites[f"{parent}.{name}"] = LoraSite(holder, name, holder.group)
        targets = lora_targets(self.args)
        # The table the adapter loader validates against and the model's own layers must agree.
        assert set(sites) == set(targets), (
            f"LoRA sites differ from lora_targets(): {set(sites) ^ set(targets)}"
        )
        return {name: sites[name] for name in targets}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor a checkpoint of this architecture holds, by name -> the (view of the)
        parameter it is copied into; `lm_head.weight` is absent when tied to the embeddings."""
        tensors: dict[str, torch.Tensor] = {}
        holder_params = {id(p) for holder in self.lora_holders for p in holder.parameters()}
        for parent, holder in self._holders_by_parent():
            for name, (lo, hi) in holder.slice_bounds.items():
                if isinstance(holder, ExpertsLinear):
                    for expert in range(holder.num_experts):
                        tensors[f"{parent}.experts.{expert}.{name}.weight"] = holder.weight.data[
                            expert, lo:hi
                        ]
                    continue
                assert isinstance(holder, LoRALinear)
                tensors[f"{parent}.{name}.weight"] = holder.weight.data[lo:hi]
                if holder.bias is not None:
                    tensors[f"{parent}.{name}.bias"] = holder.bias.data[lo:hi]
        for path, param in self.named_parameters(remove_duplicate=False):
            if path == "lm_head_weight":
                if not self.args.tie_word_embeddings:
                    tensors["lm_head.weight"] = param.data
            elif id(param) not in holder_params:
                tensors[f"model.{path}"] = param.data
        return tensors

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, KVH, D]
        meta: AttentionMetadata,
        lora: LoraStep | None,
    ) -> torch.Tensor:  # [T, hidden], after the final norm
        x = self.embed_tokens(input_ids)
        if self.args.embedding_scale is not None:  # Gemma: the scale rounded to the dtype first
            x = x * torch.tensor(self.args.embedding_scale, dtype=x.dtype)
        for rotary in self.rotaries:  # `positions` may be a static buffer refilled since last step
            rotary.forget_tables()
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, kv_caches[i], meta, lora)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, V] float32
        logits = linear(hidden, self.lm_head_weight)
        cap = self.args.final_logit_softcap
        if cap is not None:  # Gemma 2, in the model's dtype as transformers does
            logits = torch.tanh(logits / cap) * cap
        return logits.float()
