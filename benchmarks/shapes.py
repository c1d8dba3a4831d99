"""Real-sized random checkpoints for the engine benchmarks: a model's shape, not its weights.

`real_shape_model(name)` builds (once, cached like the test fixtures) a Hugging Face checkpoint with
the dimensions of a real model and random weights, using the tests' tiny BPE tokenizer (ids past
its vocabulary decode to nothing, which is all a throughput benchmark needs), and
`real_shape_adapters(model_dir)` the three adapter kinds issue 18 names: rank 8 on q/v, rank 16
on every linear layer with rsLoRA, rank 64 on o/gate/up/down.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tests.fixtures import ALL_LINEAR, AdapterSpec, build_tokenizer, cached, tiny_adapter


@dataclass(frozen=True)
class Shape:
    architecture: str  # "llama" | "qwen2"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192


SHAPES = {
    "smollm2-135m": Shape("llama", 576, 1536, 30, 9, 3, 49152),
    "qwen2.5-0.5b": Shape("qwen2", 896, 4864, 24, 14, 2, 151936),
}

ADAPTERS = {
    "r8-qv": AdapterSpec(r=8, target_modules=("q_proj", "v_proj"), lora_alpha=16, seed=11),
    "r16-all-rslora": AdapterSpec(r=16, target_modules=ALL_LINEAR, lora_alpha=32, use_rslora=True, seed=12),
    "r64-o-mlp": AdapterSpec(r=64, target_modules=("o_proj", "gate_proj", "up_proj", "down_proj"),
                             lora_alpha=64, seed=13),
}


def real_shape_model(name: str) -> Path:
    shape = SHAPES[name]

    def build(folder: Path) -> None:
        import torch
        import transformers

        build_tokenizer(folder, 384)
        common = dict(
            vocab_size=shape.vocab_size,
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_hidden_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_key_value_heads,
            max_position_embeddings=shape.max_position_embeddings,
            tie_word_embeddings=shape.tie_word_embeddings,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            dtype="float32",
        )
        if shape.architecture == "llama":
            config: transformers.PretrainedConfig = transformers.LlamaConfig(rope_theta=100000.0, **common)
            model_cls: type = transformers.LlamaForCausalLM
        else:
            config = transformers.Qwen2Config(use_sliding_window=False, rope_theta=1000000.0, **common)
            model_cls = transformers.Qwen2ForCausalLM
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = model_cls(config).eval()
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param.dim() == 2:  # keep activations in a sane range over many layers
                    param.normal_(0.0, 0.02)
                elif param_name.endswith(".bias"):
                    param.normal_(0.0, 0.01)
        model.save_pretrained(folder, safe_serialization=True)

    return cached(f"shape-{name}", asdict(shape), build)


def real_shape_adapters(model_dir: Path) -> dict[str, Path]:
    return {name: tiny_adapter(model_dir, spec) for name, spec in ADAPTERS.items()}
