"""Which slice of each weight a shard holds (Megatron-LM's split, as TGI and vLLM shard).

Column-parallel: q/k/v (whole heads and KV heads per shard) and gate/up (a slice of the
intermediate size) keep their rows for the shard's heads/columns; their input is replicated.
Row-parallel: o_proj and down_proj keep the matching input columns; each shard's output is a
partial sum that one all-reduce per block completes. Everything else (embeddings, norms, the LM
head) is replicated: see docs/runtime.md for why the vocabulary is not split.

LoRA follows its base layer (S-LoRA / Punica): column-parallel layers keep all of A and B's rows
of the shard; row-parallel layers keep A's input columns of the shard and all of B, and add
their delta before the layer's all-reduce: sum_s (x_s A_s^T) B^T = (x A^T) B^T, so a LoRA
costs no collective of its own (docs/kernels.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from lorafleet.runtime.errors import ModelLoadError
from lorafleet.runtime.models.args import ModelArgs

Segments = tuple[tuple[int, int], ...]  # [lo, hi) ranges of the full tensor, concatenated in order
COLUMN = {"q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj"}
ROW = {"o_proj", "down_proj"}


def check_shardable(args: ModelArgs, num_shard: int) -> None:
    """Raises `ModelLoadError` saying why `args` cannot be split over `num_shard` shards."""
    if num_shard == 1:
        return
    if args.is_moe:
        raise ModelLoadError(
            f"--num-shard {num_shard}: {args.architecture} (mixture of experts) cannot be sharded yet; "
            "serve it with --num-shard 1"
        )
    for what, count in (
        ("attention heads", args.num_heads),
        ("KV heads", args.num_kv_heads),
        ("intermediate size", args.intermediate_size),
    ):
        if count % num_shard:
            fits = [n for n in range(1, args.num_kv_heads + 1) if _divides(args, n)]
            raise ModelLoadError(
                f"--num-shard {num_shard}: the model's {what} ({count}) do not divide by {num_shard}; "
                f"shard counts that fit this model: {', '.join(map(str, fits))}"
            )


def _divides(args: ModelArgs, n: int) -> bool:
    return not (args.num_heads % n or args.num_kv_heads % n or args.intermediate_size % n)


@dataclass(frozen=True)
class ShardPlan:
    """Shard `rank` of `world` of the architecture `full` (the checkpoint's, unsplit)."""

    rank: int
    world: int
    full: ModelArgs

    def __post_init__(self) -> None:
        check_shardable(self.full, self.world)

    def local_args(self) -> ModelArgs:
        """The architecture the shard's `DecoderModel` is built with: its heads and columns only."""
        a, n = self.full, self.world
        return replace(
            a, num_heads=a.num_heads // n, num_kv_heads=a.num_kv_heads // n,
            intermediate_size=a.intermediate_size // n,
        )

    def segments(self, module: str) -> tuple[int, Segments] | None:
        """(dim, ranges) of the full weight of projection `module` this shard keeps; None: all."""
        a, r, n = self.full, self.rank, self.world
        q, kv, inter = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.intermediate_size

        def part(offset: int, size: int) -> tuple[int, int]:
            return offset + r * size // n, offset + (r + 1) * size // n

        layouts = {
            "q_proj": (part(0, q),), "k_proj": (part(0, kv),), "v_proj": (part(0, kv),),
            "qkv_proj": (part(0, q), part(q, kv), part(q + kv, kv)),
            "gate_proj": (part(0, inter),), "up_proj": (part(0, inter),),
            "gate_up_proj": (part(0, inter), part(inter, inter)),
            "o_proj": (part(0, q),), "down_proj": (part(0, inter),),
        }
        if module not in layouts:
            return None
        return (0 if module in COLUMN else 1), layouts[module]

    def checkpoint_cut(self, name: str) -> tuple[int, Segments] | None:
        """The cut of checkpoint tensor `name` ("model.layers.0.mlp.down_proj.weight")."""
        parts = name.split(".")
        if len(parts) < 2 or parts[-1] not in ("weight", "bias"):
            return None
        cut = self.segments(parts[-2])
        if cut is not None and parts[-1] == "bias" and cut[0] == 1:  # o_proj/down_proj: built bias-free
            raise ModelLoadError(f"{name}: a bias on a row-parallel projection cannot be sharded")
        return cut

    def cut_lora(
        self, module: str, lora_a: torch.Tensor, lora_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shard's A [r, K_s] and B [N_s, r] of PEFT module `module` (a full module name)."""
        cut = self.segments(module.rsplit(".", 1)[-1])
        if cut is None:
            return lora_a, lora_b
        dim, ranges = cut
        if dim == 0:  # column-parallel: B's output rows of the shard, A whole
            return lora_a, torch.cat([lora_b[lo:hi] for lo, hi in ranges])
        return torch.cat([lora_a[:, lo:hi] for lo, hi in ranges], dim=1), lora_b  # row-parallel
