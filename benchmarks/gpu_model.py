"""Checkpoints for the GPU checks, written with torch, safetensors and tokenizers alone.

The device machine has transformers 5 (the test fixtures are built with the 4.x API) and no
network, so these checkpoints do not go through transformers at all: config.json is written in the
Llama/Mistral layout the runtime reads, the weights are random (std 0.02, so activations stay
sane over many layers; the tiny model's LM head is scaled up so greedy choices are rarely
near-ties), the tokenizer is word-level over `t0` .. `t{V-1}`, and the adapters are PEFT folders
(`adapter_config.json` + `adapter_model.safetensors`) with random A and B on every projection.

    model_dir = build_model(root / "tiny", TINY)
    adapters = build_adapters(root, model_dir, TINY, count=4, rank=8)   # {"a0": path, ...}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    embed_std: float = 0.02
    layer_std: float | None = 0.02  # None: 1 / sqrt(in_features)
    lm_head_std: float = 0.02

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each projection."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


# gpu_smoke's model: a Mistral with GQA, 4 layers; its logits are well separated
TINY = Shape("MistralForCausalLM", 512, 256, 512, 4, 8, 4, 32, embed_std=1.0, layer_std=None,
             lm_head_std=3 / 256**0.5)
# Llama-3.2-1B's dimensions (1.24 B parameters, 2.5 GB in bf16)
LLAMA_1B = Shape("LlamaForCausalLM", 128256, 2048, 8192, 16, 32, 8, 64, tie_word_embeddings=True)


def _part(module: str) -> str:
    return "self_attn" if module[0] in "qkvo" else "mlp"


def build_model(folder: Path, shape: Shape, *, seed: int = 1, device: str = "cpu") -> Path:
    """Writes the checkpoint into `folder` (created) and returns it; weights drawn on `device`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator(device).manual_seed(seed)

    def normal(*size: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*size, generator=gen, device=device) * std).to(torch.bfloat16).cpu()

    h = shape.hidden_size
    weights = {"model.embed_tokens.weight": normal(shape.vocab_size, h, std=shape.embed_std),
               "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    if not shape.tie_word_embeddings:
        weights["lm_head.weight"] = normal(shape.vocab_size, h, std=shape.lm_head_std)
    for layer in range(shape.num_layers):
        prefix = f"model.layers.{layer}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            weights[f"{prefix}.{norm}.weight"] = torch.ones(h, dtype=torch.bfloat16)
        for module, (out, inp) in shape.module_shapes().items():
            std = shape.layer_std if shape.layer_std is not None else 1 / inp**0.5
            weights[f"{prefix}.{_part(module)}.{module}.weight"] = normal(out, inp, std=std)
    save_file(weights, str(folder / "model.safetensors"))
    config = {
        "architectures": [shape.architecture], "vocab_size": shape.vocab_size, "hidden_size": h,
        "intermediate_size": shape.intermediate_size, "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "max_position_embeddings": 8192, "tie_word_embeddings": shape.tie_word_embeddings,
        "bos_token_id": 0, "eos_token_id": 1,
    }
    (folder / "config.json").write_text(json.dumps(config))
    _write_tokenizer(folder, shape.vocab_size)
    return folder


def _write_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "t1", "bos_token": "t0"}))


def build_adapters(root: Path, model_dir: Path, shape: Shape, *, count: int, rank: int,
                   seed: int = 100) -> dict[str, Path]:
    """`count` PEFT adapters of `rank` on every projection of every layer: {"a0": folder, ...}."""
    from safetensors.torch import save_file

    adapters = {}
    for index in range(count):
        folder = root / f"a{index}"
        folder.mkdir(parents=True)
        gen = torch.Generator().manual_seed(seed + index)
        tensors = {}
        for layer in range(shape.num_layers):
            for module, (out, inp) in shape.module_shapes().items():
                name = f"base_model.model.model.layers.{layer}.{_part(module)}.{module}"
                tensors[f"{name}.lora_A.weight"] = torch.randn(rank, inp, generator=gen) / inp**0.5
                tensors[f"{name}.lora_B.weight"] = torch.randn(out, rank, generator=gen) / rank
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(MODULES),
                  "base_model_name_or_path": str(model_dir)}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        adapters[f"a{index}"] = folder
    return adapters
