"""OpenAI request bodies for `/v1/chat/completions` and `/v1/completions`.

`model` names the adapter; the base model answers to its id, `tgi` (TGI's convention), `dummy`
(what `huggingface_hub` sends when the client was built from a URL) or an absent `model`.
Features this server does not have (tools, several choices, logit bias, ...) are refused with a
422 that names them rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BASE_MODEL_ALIASES = frozenset({"", "tgi", "dummy", "base"})


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; a list of parts must be text parts only."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"message content parts must be text parts, got type {part.get('type')!r}")
            texts.append(part["text"])
        return "".join(texts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class OpenAISamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    # NaN passes every range check (all comparisons are false): refuse NaN and inf as floats.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None  # TGI's extension
    ignore_eos: bool = False  # vLLM's extension: generate exactly `max_tokens`
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: Any = None
    user: str | None = None

    @field_validator("stop", mode="after")
    @classmethod
    def _stop_as_list(cls, value: str | list[str] | None) -> list[str] | None:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_common(self) -> OpenAISamplingFields:
        if self.n not in (None, 1):
            raise ValueError("`n` must be 1: this server returns one choice per request")
        if self.presence_penalty not in (None, 0, 0.0):
            raise ValueError("`presence_penalty` is not supported; use `frequency_penalty`")
        if self.logit_bias:
            raise ValueError("`logit_bias` is not supported by this server")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("`temperature` must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("`top_p` must be > 0.0 and <= 1.0")
        return self

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(OpenAISamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    tool_prompt: str | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.tools:
            raise ValueError("`tools` (function calling) is not supported by this server")
        if self.tool_choice not in (None, "none", "auto"):
            raise ValueError("`tool_choice` is not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError("`response_format` other than text is not supported by this server")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 5:
            raise ValueError("`top_logprobs` must be >= 0 and <= 5")
        for message in self.messages:
            message.text()  # refuses non-text parts here, as a 422
        return self


class CompletionRequest(OpenAISamplingFields):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise ValueError("`prompt` must be one prompt: batches of prompts are not supported")
        if isinstance(self.prompt, (str, list)) and len(self.prompt) == 0:
            raise ValueError("`prompt` cannot be empty")
        if self.suffix:
            raise ValueError("`suffix` is not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("`best_of` must be 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= 5:
            raise ValueError("`logprobs` must be >= 0 and <= 5")
        return self

    def prompt_input(self) -> str | list[int]:
        """The one prompt: a string, or token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt[0], str):
            return str(self.prompt[0])
        return [int(t) for t in self.prompt]


FinishReasonName = Literal["stop", "length"]
