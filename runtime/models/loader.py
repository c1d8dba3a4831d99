"""Builds a `DecoderModel` from a Hugging Face folder: `config.json` + safetensors (single or sharded).

Tensors are read one at a time with `safetensors.safe_open` (memory-mapped) and copied into the
model's preallocated parameters, so the checkpoint never sits in memory twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lorafleet.runtime.errors import ModelLoadError
from lorafleet.runtime.models import llama, mistral, qwen2
from lorafleet.runtime.models.decoder import DecoderModel, LoraCapacity, ModelArgs

_ARCHITECTURES = {
    name: module.model_args for module in (llama, mistral, qwen2) for name in module.ARCHITECTURES
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.(weight|bias)$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def read_config(model_dir: Path) -> tuple[dict[str, Any], ModelArgs]:
    """Parses `config.json`; raises `ModelLoadError` naming the file or the architecture."""
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelLoadError(f"{path}: not found; a model folder needs config.json") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable or not JSON: {e}") from e
    arch = (config.get("architectures") or [None])[0]
    if arch not in _ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported (supported: {', '.join(sorted(_ARCHITECTURES))})"
        )
    try:
        return config, _ARCHITECTURES[arch](config)
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{path}: invalid {arch} config: {e}") from e


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, single-file or sharded through the index."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: unreadable sharded index: {e}") from e
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index}: lists missing shard(s): {', '.join(missing)}")
        return files
    if any(model_dir.glob("pytorch_model*.bin")):
        raise ModelLoadError(f"{model_dir}: only pickled .bin weights found; convert them to safetensors")
    raise ModelLoadError(f"{single}: not found (nor model.safetensors.index.json)")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) one at a time; a corrupt file raises `ModelLoadError` naming it."""
    from safetensors import safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    yield name, f.get_tensor(name)
        except ModelLoadError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt headers/data
            raise ModelLoadError(f"{path}: corrupt or unreadable safetensors file: {e}") from e


def load_model(
    model_dir: Path,
    args: ModelArgs,
    *,
    dtype: torch.dtype,
    device: torch.device,
    lora: LoraCapacity,
    progress: Callable[[str], None] | None = None,
) -> DecoderModel:
    """Builds the model `args` (from `read_config(model_dir)`) and fills it from its safetensors files."""
    files = weight_files(model_dir)
    if progress:
        progress(
            f"building {args.architecture} ({args.num_layers} layers, hidden {args.hidden_size}) on {device}"
        )
    with torch.device(device):
        model = DecoderModel(args, lora, dtype, device).eval()
    expected = _expected_names(args)
    for name, tensor in iter_tensors(files):
        if _IGNORED.search(name):
            continue
        if name not in expected:
            raise ModelLoadError(f"{model_dir}: unexpected tensor {name!r} for {args.architecture}")
        _assign(model, name, tensor, model_dir)
        expected.discard(name)
    if args.tie_word_embeddings:
        expected.discard("lm_head.weight")
    if expected:
        raise ModelLoadError(f"{model_dir}: tensors missing from the checkpoint: {sorted(expected)[:5]}")
    if progress:
        progress(f"loaded weights from {len(files)} file(s)")
    return model


def _expected_names(args: ModelArgs) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(args.num_layers):
        prefix = f"model.layers.{i}"
        names |= {f"{prefix}.input_layernorm.weight", f"{prefix}.post_attention_layernorm.weight"}
        for module in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.add(f"{prefix}.self_attn.{module}.weight")
        for module in ("gate_proj", "up_proj", "down_proj"):
            names.add(f"{prefix}.mlp.{module}.weight")
        if args.attention_bias:
            names |= {f"{prefix}.self_attn.{m}.bias" for m in ("q_proj", "k_proj", "v_proj")}
    return names


def _assign(model: DecoderModel, name: str, tensor: torch.Tensor, model_dir: Path) -> None:
    def copy(target: torch.Tensor) -> None:
        if target.shape != tensor.shape:
            raise ModelLoadError(
                f"{model_dir}: {name} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(tensor)

    with torch.no_grad():
        if name == "model.embed_tokens.weight":
            copy(model.embed_tokens.weight)
        elif name == "model.norm.weight":
            copy(model.norm.weight)
        elif name == "lm_head.weight":
            if not model.args.tie_word_embeddings:
                copy(model.lm_head_weight)
        elif match := _LAYER_KEY.match(name):
            layer, module, kind = int(match[1]), match[3], match[4]
            linear = model.lora_linear(layer, module)
            lo, hi = linear.slice_bounds[module]
            target = linear.weight[lo:hi] if kind == "weight" else linear.bias[lo:hi]  # type: ignore[index]
            copy(target)
        else:
            layer_norm = re.match(
                r"^model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$", name
            )
            if not layer_norm:
                raise ModelLoadError(f"{model_dir}: unexpected tensor {name!r}")
            copy(getattr(model.layers[int(layer_norm[1])], layer_norm[2]).weight)
