"""TGI's request bodies, field for field (`/generate`, `/generate_stream`, `/`, `/tokenize`).

Clients send every field they know, often as `null` or as a default (`text-generation` always
sends `watermark: false`, `best_of: null`, `grammar: null`), so every TGI field is accepted.
Value ranges are checked here with TGI's messages; limits that depend on the model (input
length, `max_total_tokens`, `truncate`) and adapters are checked by the engine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5


class GenerateParameters(BaseModel):
    """TGI's `parameters` object."""

    # NaN passes every range check (all comparisons are false): refuse NaN and inf as floats.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: dict[str, Any] | None = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = False
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    ignore_eos: bool = False  # an extension (vLLM's name): generate exactly `max_new_tokens`

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _check_values(self) -> GenerateParameters:
        problem = parameter_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


def parameter_problem(p: GenerateParameters) -> str | None:  # noqa: C901 - a flat list of checks
    """TGI's message for the first out-of-range value of `p`, or None."""
    if p.temperature is not None and p.temperature <= 0:
        return "`temperature` must be strictly positive"
    if p.top_p is not None and not 0 < p.top_p < 1:
        return "`top_p` must be > 0.0 and < 1.0"
    if p.typical_p is not None and not 0 < p.typical_p < 1:
        return "`typical_p` must be > 0.0 and < 1.0"
    if p.top_k is not None and p.top_k <= 0:
        return "`top_k` must be strictly positive"
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        return "`repetition_penalty` must be strictly positive"
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        return "`frequency_penalty` must be >= -2.0 and <= 2.0"
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        return "`max_new_tokens` must be strictly positive"
    if p.seed is not None and not 0 <= p.seed < 2**63:
        return "`seed` must be >= 0 and < 2^63"
    if p.truncate is not None and p.truncate <= 0:
        return "`truncate` must be strictly positive"
    if len(p.stop) > MAX_STOP_SEQUENCES:
        return f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(p.stop)}"
    if any(s == "" for s in p.stop):
        return "`stop` sequences must not be empty strings"
    if p.top_n_tokens is not None and not 0 <= p.top_n_tokens <= MAX_TOP_N_TOKENS:
        return f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {p.top_n_tokens}"
    if p.best_of is not None and p.best_of != 1:
        return "`best_of` must be 1: this server returns one sequence per request"
    if p.watermark:
        return "`watermark` is not supported by this server"
    if p.grammar is not None:
        return "`grammar` (structured output) is not supported by this server"
    return None


class GenerateRequest(BaseModel):
    """Body of `POST /generate` and `POST /generate_stream`."""

    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters_none_is_default(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("inputs")
    @classmethod
    def _inputs_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("`inputs` cannot be empty")
        return value


class CompatGenerateRequest(GenerateRequest):
    """Body of TGI's `POST /`: `/generate` or `/generate_stream` chosen by `stream`."""

    stream: bool = False


class TokenizeRequest(BaseModel):
    """Body of `POST /tokenize` (TGI's shape; `parameters` is accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: dict[str, Any] | None = None
    add_special_tokens: bool = True
