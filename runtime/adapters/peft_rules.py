"""PEFT's rules, reproduced exactly (peft 0.21 `check_target_module_exists`, `get_pattern_key`):
which modules an `adapter_config.json` targets, and each module's rank, alpha and scale.

`key` is always a module's full name in the transformers model (`model.layers.1.mlp.down_proj`).

- `target_modules` as a list: a module is targeted when its name equals an entry or ends with
  `.` + an entry; then `layers_to_transform` (an int or a list) keeps only the layers it names,
  the layer index being the first number after `layers_pattern` (or, without a pattern, the
  first `.<name>.<number>.` segment). As a string: a regex `re.fullmatch`ed against the name
  (`layers_to_transform` does not apply). `"all-linear"`: every linear layer but the LM head,
  by full name. `exclude_modules` (list or regex) wins over all of these.
- `rank_pattern` / `alpha_pattern`: the FIRST key (in file order) for which
  `re.match(rf"(.*\\.)?({key})$", name)` matches gives the value; otherwise `r` / `lora_alpha`.
  So `"down_proj"`, `"mlp.down_proj"`, `"layers.1.mlp.down_proj"`,
  `"model.layers.1.mlp.down_proj"` and regexes like `"layers\\.[01]\\.mlp\\.down_proj"` all match
  `model.layers.1.mlp.down_proj`.
- scale = alpha / r, or alpha / sqrt(r) with `use_rslora`.

Fields that change what LoRA computes in ways the runtime does not implement are refused, each
naming the field (`REFUSED`); fields that only matter for training (dropout, initialisation,
Megatron, ...) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.runtime.errors import AdapterLoadError

ALL_LINEAR = "all-linear"
MAX_PATTERN_LENGTH = 1000  # a module-name regex is short; a longer one is an attack or a mistake
# field -> predicate that says the value changes what the adapter computes beyond plain LoRA
REFUSED: dict[str, Any] = {
    "peft_type": lambda v: v not in (None, "LORA"),
    "use_dora": bool,
    "modules_to_save": bool,
    "bias": lambda v: v not in (None, "none"),
    "lora_bias": bool,
    "fan_in_fan_out": bool,
    "target_parameters": bool,
    "trainable_token_indices": bool,
    "layer_replication": bool,
    "alora_invocation_tokens": bool,
    "use_qalora": bool,
    "arrow_config": bool,
}


def refuse_unsupported(config: Mapping[str, Any], path: Path) -> None:
    """Raises `AdapterLoadError` naming the first field that is not plain LoRA."""
    for field, is_unsupported in REFUSED.items():
        if is_unsupported(config.get(field)):
            raise AdapterLoadError(
                f"{path}: {field}={config.get(field)!r} is not supported (plain LoRA only: "
                'bias="none", no DoRA, no modules_to_save, no target_parameters)'
            )


@dataclass(frozen=True)
class PeftRules:
    target_modules: str | frozenset[str]  # a regex, or names / name suffixes
    exclude_modules: str | frozenset[str] | None
    layers_to_transform: int | frozenset[int] | None
    layers_pattern: tuple[str, ...]
    r: int
    lora_alpha: float
    rank_pattern: tuple[tuple[str, int], ...]  # in file order: the first match wins
    alpha_pattern: tuple[tuple[str, float], ...]
    use_rslora: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: Path, linear_modules: Iterable[str]) -> PeftRules:
        """Reads the rules; `linear_modules` (full names) is what `all-linear` selects."""
        targets = config.get("target_modules")
        if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
            targets = list(linear_modules)
        if not targets:
            raise AdapterLoadError(f"{path}: target_modules is empty (nothing to adapt)")
        layers = config.get("layers_to_transform")
        pattern = config.get("layers_pattern") or ()
        try:
            rules = cls(
                target_modules=targets if isinstance(targets, str) else frozenset(map(str, targets)),
                exclude_modules=_names_or_regex(config.get("exclude_modules")),
                layers_to_transform=(
                    None
                    if layers is None or layers == []
                    else int(layers)
                    if isinstance(layers, int)
                    else frozenset(map(int, layers))
                ),
                layers_pattern=(pattern,) if isinstance(pattern, str) else tuple(pattern),
                r=int(config.get("r", 8)),
                lora_alpha=float(config.get("lora_alpha", 8)),
                rank_pattern=tuple((str(k), int(v)) for k, v in (config.get("rank_pattern") or {}).items()),
                alpha_pattern=tuple(
                    (str(k), float(v)) for k, v in (config.get("alpha_pattern") or {}).items()
                ),
                use_rslora=bool(config.get("use_rslora")),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise AdapterLoadError(f"{path}: invalid LoRA config: {e}") from e
        rules.check_patterns(path)
        return rules

    def check_patterns(self, path: Path) -> None:
        """Every regex compiles and is of a sane length; else `AdapterLoadError` naming the field."""
        fields: list[tuple[str, str]] = [("layers_pattern", p) for p in self.layers_pattern]
        fields += [("rank_pattern", k) for k, _ in self.rank_pattern]
        fields += [("alpha_pattern", k) for k, _ in self.alpha_pattern]
        for name, value in (
            ("target_modules", self.target_modules),
            ("exclude_modules", self.exclude_modules),
        ):
            if isinstance(value, str):
                fields.append((name, value))
        for name, pattern in fields:
            if len(pattern) > MAX_PATTERN_LENGTH:
                raise AdapterLoadError(
                    f"{path}: {name} pattern is longer than {MAX_PATTERN_LENGTH} characters"
                )
            try:
                re.compile(pattern)
            except re.error as e:
                raise AdapterLoadError(
                    f"{path}: {name} pattern {pattern[:80]!r} is not a valid regex: {e}"
                ) from e

    def targets(self, key: str) -> bool:
        """PEFT's `check_target_module_exists(config, key)`."""
        excluded = self.exclude_modules
        if isinstance(excluded, str):
            if re.fullmatch(excluded, key):
                return False
        elif excluded and (key in excluded or any(key.endswith(f".{e}") for e in excluded)):
            return False
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, key) is not None
        if key in self.target_modules:
            return True
        found = any(key.endswith(f".{t}") for t in self.target_modules)
        if not found or self.layers_to_transform is None:
            return found
        layer = _layer_index(key, self.layers_pattern)
        if layer is None:
            return False
        if isinstance(self.layers_to_transform, int):
            return layer == self.layers_to_transform
        return layer in self.layers_to_transform

    def rank(self, key: str) -> int:
        return int(_pattern_value(self.rank_pattern, key, self.r))

    def alpha(self, key: str) -> float:
        return float(_pattern_value(self.alpha_pattern, key, self.lora_alpha))

    def scale(self, key: str, rank: int) -> float:
        alpha = self.alpha(key)
        return alpha / rank**0.5 if self.use_rslora else alpha / rank


def _names_or_regex(value: Any) -> str | frozenset[str] | None:
    if not value:
        return None
    return value if isinstance(value, str) else frozenset(map(str, value))


def _layer_index(key: str, layers_pattern: tuple[str, ...]) -> int | None:
    # Lazy `.*?`: the FIRST number after the pattern is the layer (not an expert index after it).
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for pattern in layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match["idx"]) if match else None


def _pattern_value(patterns: tuple[tuple[str, Any], ...], key: str, default: Any) -> Any:
    for pattern, value in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default
