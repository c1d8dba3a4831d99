"""`generation_config.json`: the checkpoint's extra end-of-sequence ids and default sampling values.

What the peers do with this file (checked in their sources, transformers 4.57, TGI 3.3, vLLM 0.11):

- transformers `generate()` starts from it: `eos_token_id` (int or list) stops generation, and
  `do_sample`, `temperature`, `top_k`, `top_p`, `typical_p`, `repetition_penalty` apply unless
  the call overrides them (so Llama 3's `do_sample: true, temperature: 0.6, top_p: 0.9` samples
  by default).
- TGI reads only `eos_token_id`: a list replaces the tokenizer's EOS as the set that stops a
  request (`StoppingCriteria`); the sampling values are ignored, and a request that sets no
  sampling parameter is greedy.
- vLLM (`--generation-config auto`, its default) uses the sampling values as the defaults of
  every request that leaves them unset, greedy requests included.

What lorafleet does: every id of the list joins the EOS set (with the tokenizer's and
config.json's: a superset of TGI's set, since real files list the tokenizer's EOS too). Sampling
values fill the fields a *sampled* request leaves unset (`do_sample`, or any of temperature /
top_k / top_p / typical_p set — TGI's rule for "sampled"); a request that is greedy by that rule
stays greedy, as in TGI, whatever `do_sample` says here. Neutral values (temperature 1 or 0,
top_k 0, top_p 1, typical_p 1, repetition_penalty 1) are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorafleet.runtime.errors import ModelLoadError
from lorafleet.runtime.layers.sampler import is_greedy
from lorafleet.runtime.types import SamplingParams

FILE = "generation_config.json"


@dataclass(frozen=True)
class GenerationDefaults:
    eos_token_ids: frozenset[int] = frozenset()
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None

    def apply(self, params: SamplingParams) -> SamplingParams:
        """`params` with the unset sampling fields of a sampled request filled in; greedy stays greedy."""
        if is_greedy(params):
            return params
        fields = ("temperature", "top_k", "top_p", "typical_p", "repetition_penalty")
        changes = {
            name: getattr(self, name)
            for name in fields
            if getattr(params, name) is None and getattr(self, name) is not None
        }
        return replace(params, **changes) if changes else params


def read_generation_config(model_dir: Path) -> GenerationDefaults:
    """The file's EOS ids and sampling defaults; absent file = none. Raises `ModelLoadError` naming it."""
    path = model_dir / FILE
    if not path.is_file():
        return GenerationDefaults()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
        return GenerationDefaults(
            eos_token_ids=frozenset(token_ids(raw.get("eos_token_id"))),
            temperature=_value(raw, "temperature", float, neutral=(0.0, 1.0), valid=lambda v: v > 0),
            top_k=_value(raw, "top_k", int, neutral=(0,), valid=lambda v: v > 0),
            top_p=_value(raw, "top_p", float, neutral=(1.0,), valid=lambda v: 0 < v < 1),
            typical_p=_value(raw, "typical_p", float, neutral=(1.0,), valid=lambda v: 0 < v < 1),
            repetition_penalty=_value(
                raw, "repetition_penalty", float, neutral=(1.0,), valid=lambda v: v > 0
            ),
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: invalid generation config: {e}") from e


def token_ids(value: Any) -> set[int]:
    """An `eos_token_id` field: absent, one id or a list of ids."""
    if value is None:
        return set()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"eos_token_id must be a token id or a list of them, got {value!r}")
    return set(values)


def _value(raw: dict[str, Any], name: str, kind: type, *, neutral: tuple[float, ...], valid: Any) -> Any:
    value = raw.get(name)
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value in neutral:
        return None
    if kind is int and value != int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not valid(value):
        raise ValueError(f"{name}={value!r} is out of range")
    return kind(value)
