"""Request checks against the model's limits, with TGI's messages (each names the parameter)."""

from __future__ import annotations

import dataclasses
import math
import random

from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.errors import EngineValidationError
from lorafleet.runtime.layers.sampler import is_greedy
from lorafleet.runtime.tokenizer import LONE_SURROGATE, Tokenizer
from lorafleet.runtime.types import GenerationRequest, PreparedRequest, SamplingParams

MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
FLOAT_PARAMS = ("temperature", "top_p", "typical_p", "repetition_penalty", "frequency_penalty")


def check_params(p: SamplingParams) -> None:
    """Raises `EngineValidationError` for out-of-range sampling values."""
    for name in FLOAT_PARAMS:  # NaN passes every comparison below: refuse it (and inf) first
        value = getattr(p, name)
        if value is not None and not math.isfinite(value):
            raise EngineValidationError(f"`{name}` must be a finite number")
    if p.temperature is not None and p.temperature <= 0:
        raise EngineValidationError("`temperature` must be strictly positive")
    if p.top_p is not None and not 0 < p.top_p < 1:
        raise EngineValidationError("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0 < p.typical_p < 1:
        raise EngineValidationError("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise EngineValidationError("`top_k` must be strictly positive")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise EngineValidationError("`repetition_penalty` must be strictly positive")
    if p.frequency_penalty is not None and not -2 <= p.frequency_penalty <= 2:
        raise EngineValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if not 0 <= p.top_n_tokens <= MAX_TOP_N_TOKENS:
        raise EngineValidationError(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    if len(p.stop) > MAX_STOP_SEQUENCES:
        raise EngineValidationError(
            f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(p.stop)}"
        )
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise EngineValidationError("`max_new_tokens` must be strictly positive")
    if p.seed is not None and not 0 <= p.seed < 2**64:
        raise EngineValidationError("`seed` must be >= 0 and < 2**64")


def prepare_request(
    request: GenerationRequest, config: EngineConfig, tokenizer: Tokenizer
) -> PreparedRequest:
    """Checks and tokenizes one request (not its adapter); chooses the seed of a sampled request.

    A sampled request's unset sampling fields take generation_config.json's values
    (`GenerationDefaults.apply`); the prepared request carries the filled-in parameters.
    """
    check_params(request.params)
    params = config.generation_defaults.apply(request.params)
    if params is not request.params:
        request = dataclasses.replace(request, params=params)
    if request.truncate is not None and not 0 < request.truncate <= config.max_input_tokens:
        raise EngineValidationError(
            f"`truncate` must be strictly positive and less than {config.max_input_tokens}. "
            f"Given: {request.truncate}"
        )
    ids = _prompt_ids(request, config, tokenizer)
    if not ids:
        raise EngineValidationError("`inputs` cannot be empty")
    if len(ids) > config.max_input_tokens:
        raise EngineValidationError(
            f"`inputs` tokens must be at most {config.max_input_tokens}. Given: {len(ids)}"
        )
    max_new = request.params.max_new_tokens
    if max_new is None:
        max_new = config.max_total_tokens - len(ids)
        if max_new <= 0:
            raise EngineValidationError(
                f"`inputs` leave no room for new tokens within max_total_tokens={config.max_total_tokens}"
            )
    if len(ids) + max_new > config.max_total_tokens:
        raise EngineValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {config.max_total_tokens}. "
            f"Given: {len(ids)} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    seed = None
    if not is_greedy(request.params):
        seed = request.params.seed if request.params.seed is not None else random.randrange(2**63)
    return PreparedRequest(request, tuple(ids), max_new, seed)


def _prompt_ids(request: GenerationRequest, config: EngineConfig, tokenizer: Tokenizer) -> list[int]:
    """The prompt's token ids after `truncate`, refusing a text that is certainly too long
    before the tokenizer runs (a bound from the vocabulary, `Tokenizer.must_exceed`)."""
    prompt, keep = request.prompt, request.truncate
    if not isinstance(prompt, str):
        ids = list(prompt[-keep:] if keep else prompt)
        vocab_size = tokenizer.vocab_size
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < vocab_size]
        if bad:
            raise EngineValidationError(f"`inputs` holds token ids outside the vocabulary: {bad[:5]}")
        return ids
    surrogate = LONE_SURROGATE.search(prompt)
    if surrogate is not None:
        raise EngineValidationError(
            f"`inputs` is not valid Unicode: a lone surrogate at character {surrogate.start()}"
        )
    add_special = request.add_special_tokens
    if keep is not None:
        return tokenizer.encode_tail(prompt, keep, add_special)
    if tokenizer.must_exceed(prompt, config.max_input_tokens):
        raise EngineValidationError(
            f"`inputs` tokens must be at most {config.max_input_tokens}. Given: more than that "
            f"(a text of {len(prompt)} characters)"
        )
    return tokenizer.encode(prompt, add_special)
