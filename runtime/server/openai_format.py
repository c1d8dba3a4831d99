"""OpenAI bodies ⇄ engine requests and results (chat and text completions, with streaming).

Sampling follows OpenAI (and TGI's chat route): `temperature` 0 is greedy, an absent
`temperature` samples at 1.0, `top_p` 1.0 is no filtering. Stop sequences stay in the text,
as in TGI, so streamed and non-streamed answers are the same text.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from lorafleet.runtime.server.openai_schemas import (
    BASE_MODEL_ALIASES,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAISamplingFields,
)
from lorafleet.runtime.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenInfo,
)

SYSTEM_FINGERPRINT = "lorafleet-runtime"


def adapter_for_model(model: str | None, base_model_id: str) -> str | None:
    """The adapter a request's `model` names; None for the base model."""
    if model is None or model in BASE_MODEL_ALIASES or model == base_model_id:
        return None
    return model


def sampling_params(body: OpenAISamplingFields, *, top_n_tokens: int = 0) -> SamplingParams:
    greedy = body.temperature == 0
    return SamplingParams(
        max_new_tokens=body.max_new_tokens(),
        do_sample=not greedy,
        temperature=None if greedy or body.temperature == 1.0 else body.temperature,
        top_p=None if body.top_p is None or body.top_p >= 1.0 else body.top_p,
        frequency_penalty=body.frequency_penalty or None,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=tuple(body.stop or ()),
        top_n_tokens=top_n_tokens,
        ignore_eos=body.ignore_eos,
    )


def chat_request(body: ChatCompletionRequest, prompt: str, base_model_id: str) -> GenerationRequest:
    """`prompt` is the chat template's output; it carries its own BOS, as in `transformers`."""
    top_n = (body.top_logprobs or 0) if body.logprobs else 0
    return GenerationRequest(
        prompt=prompt,
        params=sampling_params(body, top_n_tokens=top_n),
        adapter_id=adapter_for_model(body.model, base_model_id),
        add_special_tokens=False,
    )


def completion_request(body: CompletionRequest, base_model_id: str) -> GenerationRequest:
    return GenerationRequest(
        prompt=body.prompt_input(),
        params=sampling_params(body, top_n_tokens=body.logprobs or 0),
        adapter_id=adapter_for_model(body.model, base_model_id),
    )


def finish_reason(reason: FinishReason) -> str:
    return "length" if reason == FinishReason.LENGTH else "stop"


def usage(result: GenerationResult) -> dict[str, int]:
    completion = len(result.tokens)
    return {
        "prompt_tokens": result.num_prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": result.num_prompt_tokens + completion,
    }


def envelope(kind: str, model: str) -> dict[str, Any]:
    """The fields every OpenAI object of one response shares."""
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def logprob_entry(token: TokenInfo, text: str | None = None) -> dict[str, Any]:
    t = token.text if text is None else text
    return {"token": t, "logprob": token.logprob, "bytes": list(t.encode())}


def chat_logprobs(
    tokens: tuple[TokenInfo, ...], top_tokens: tuple[tuple[TokenInfo, ...], ...]
) -> dict[str, Any]:
    content = []
    for i, token in enumerate(tokens):
        entry = logprob_entry(token)
        entry["top_logprobs"] = [logprob_entry(t) for t in (top_tokens[i] if i < len(top_tokens) else ())]
        content.append(entry)
    return {"content": content}


def chat_response(body: ChatCompletionRequest, result: GenerationResult, model: str) -> dict[str, Any]:
    logprobs = chat_logprobs(result.tokens, result.top_tokens) if body.logprobs else None
    return {
        **envelope("chat.completion", model),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.generated_text, "tool_calls": None},
                "logprobs": logprobs,
                "finish_reason": finish_reason(result.finish_reason),
            }
        ],
        "usage": usage(result),
    }


def completion_logprobs(
    tokens: tuple[TokenInfo, ...], top_tokens: tuple[tuple[TokenInfo, ...], ...], text_offset: int = 0
) -> dict[str, Any]:
    offsets, position = [], text_offset
    for token in tokens:
        offsets.append(position)
        position += len(token.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{t.text: t.logprob for t in step} for step in top_tokens] if top_tokens else None,
        "text_offset": offsets,
    }


def completion_response(
    body: CompletionRequest, result: GenerationResult, model: str, prompt_text: str
) -> dict[str, Any]:
    text = (prompt_text + result.generated_text) if body.echo else result.generated_text
    logprobs = None
    if body.logprobs is not None:
        offset = len(prompt_text) if body.echo else 0
        logprobs = completion_logprobs(result.tokens, result.top_tokens, offset)
    return {
        **envelope("text_completion", model),
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(result.finish_reason),
            }
        ],
        "usage": usage(result),
    }
