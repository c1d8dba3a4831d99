"""Builds a `DecoderModel` from a Hugging Face folder: `config.json` + safetensors (single or sharded).

Tensors are read one at a time with `safetensors.safe_open` (memory-mapped) and copied into the
model's preallocated parameters (converted to the serving dtype on the way), so the checkpoint
never sits in memory twice. The model names every tensor it expects (`checkpoint_tensors`), so
one loader serves every architecture.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lorafleet.runtime.errors import ModelLoadError
from lorafleet.runtime.models import gemma2, gemma3, llama, mistral, mixtral, phi3, qwen2, qwen3
from lorafleet.runtime.models.args import LoraCapacity, ModelArgs
from lorafleet.runtime.models.decoder import DecoderModel, Reduce

if TYPE_CHECKING:
    from lorafleet.runtime.distributed.plan import ShardPlan

FAMILIES = (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, mixtral)
ARCHITECTURES = {name: module.model_args for module in FAMILIES for name in module.ARCHITECTURES}
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
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    try:
        return config, ARCHITECTURES[arch](config)
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{path}: invalid or unsupported {arch} config: {e}") from e


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


def iter_tensors(
    files: list[Path], plan: ShardPlan | None = None
) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """Yields (file, name, tensor) one at a time; a corrupt file raises `ModelLoadError` naming it.
    With a shard `plan`, only the shard's slice of each split tensor is read (lazily, by range)."""
    from safetensors import safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    cut = plan.checkpoint_cut(name) if plan is not None else None
                    if cut is None:
                        yield path, name, f.get_tensor(name)
                    else:
                        yield path, name, _read_cut(path, name, f.get_slice(name), cut, plan)
        except ModelLoadError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt headers/data
            raise ModelLoadError(f"{path}: corrupt or unreadable safetensors file: {e}") from e


def _read_cut(
    path: Path, name: str, tensor_slice: Any, cut: tuple[int, tuple[tuple[int, int], ...]], plan: ShardPlan
) -> torch.Tensor:
    """The shard's slice of a split tensor, read by ranges; its full size checked first (a wrong
    size would otherwise still give a slice of the expected shape)."""
    dim, ranges = cut
    full = tuple(tensor_slice.get_shape())
    expected = sum(hi - lo for lo, hi in ranges) * plan.world
    if len(full) <= dim or full[dim] != expected:
        raise ModelLoadError(f"{path}: {name} has shape {full}, expected {expected} along dim {dim}")
    pieces = [tensor_slice[lo:hi] if dim == 0 else tensor_slice[:, lo:hi] for lo, hi in ranges]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


def load_model(
    model_dir: Path,
    args: ModelArgs,
    *,
    dtype: torch.dtype,
    device: torch.device,
    lora: LoraCapacity,
    progress: Callable[[str], None] | None = None,
    shard: tuple[ShardPlan, Reduce] | None = None,
) -> DecoderModel:
    """Builds the model `args` (from `read_config(model_dir)`) and fills it from its safetensors
    files; with `shard` (plan, all-reduce), only the plan's shard of it."""
    files = weight_files(model_dir)
    plan = shard[0] if shard is not None else None
    built = plan.local_args() if plan is not None else args
    if progress:
        progress(
            f"building {args.architecture} ({args.num_layers} layers, hidden {args.hidden_size}) on {device}"
        )
    with torch.device(device):
        model = DecoderModel(built, lora, dtype, device).eval()
    if shard is not None:
        model.install_reduce(*shard)
    targets = model.checkpoint_tensors()
    missing = set(targets)
    with torch.no_grad():
        for path, name, tensor in iter_tensors(files, plan):
            if _IGNORED.search(name) or (name == "lm_head.weight" and args.tie_word_embeddings):
                continue  # tied checkpoints may still carry the LM head: it is the embedding
            target = targets.get(name)
            if target is None:
                raise ModelLoadError(f"{path}: unexpected tensor {name!r} for {args.architecture}")
            if target.shape != tensor.shape:
                raise ModelLoadError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(tensor)
            missing.discard(name)
    if missing:
        raise ModelLoadError(f"{model_dir}: tensors missing from the checkpoint: {sorted(missing)[:5]}")
    if progress:
        progress(f"loaded weights from {len(files)} file(s)")
    return model
