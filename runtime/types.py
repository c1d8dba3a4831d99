"""The engine's request and output types: the contract between the engine and the server.

The server turns HTTP bodies into `GenerationRequest`s, has the engine check and tokenize each
once (`Engine.prepare` -> `PreparedRequest`, off the event loop), hands the prepared request to
the engine, and turns the `TokenEvent`s / `GenerationResult`s that come back into TGI and OpenAI
JSON. Validation of values against the model's limits happens in `prepare` (the engine knows
them) and raises `EngineValidationError` with a message that names the parameter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters of one request (TGI's names; `None` = not set)."""

    max_new_tokens: int | None = None  # None: max_total_tokens - input length
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0  # alternatives returned per generated token
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One request: a prompt (text, or token ids) for the base model or one adapter."""

    prompt: str | list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter_id: str | None = None  # None = the base model
    truncate: int | None = None  # keep only the last `truncate` prompt tokens
    decoder_input_details: bool = False  # return log-probs of the prompt tokens
    add_special_tokens: bool = True


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked and tokenized once by `Engine.prepare`; running it checks nothing again."""

    request: GenerationRequest
    prompt_ids: tuple[int, ...]  # after truncation
    max_new_tokens: int  # resolved against max_total_tokens
    seed: int | None  # None = greedy; else the seed of the request's own generator
    adapter_digest: str | None = None  # content digest of the adapter version it runs with
    adapter_key: str | None = None  # that version's key (name@digest prefix): what the scheduler uses
    adapter_ranks: dict[str, int] = field(default_factory=dict)  # its rank per paged projection group

    @property
    def adapter_id(self) -> str | None:
        return self.request.adapter_id


@dataclass(frozen=True)
class TokenInfo:
    id: int
    text: str
    logprob: float | None
    special: bool = False


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, streamed as soon as it is sampled.

    `text` is the newly decodable text (may be "" while a multi-byte character is incomplete).
    The last event of a request has `finish_reason` and `result` set.
    """

    index: int  # 1-based position among generated tokens
    token: TokenInfo
    text: str
    top_tokens: tuple[TokenInfo, ...] = ()
    finish_reason: FinishReason | None = None
    result: GenerationResult | None = None


@dataclass(frozen=True)
class GenerationResult:
    generated_text: str
    finish_reason: FinishReason
    tokens: tuple[TokenInfo, ...]
    prompt_tokens: tuple[TokenInfo, ...]  # log-probs only with decoder_input_details
    top_tokens: tuple[tuple[TokenInfo, ...], ...]
    seed: int | None
    num_prompt_tokens: int
    adapter_id: str | None
