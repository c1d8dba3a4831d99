"""TGI bodies ⇄ engine requests and results: the JSON shapes of `/generate` and its stream."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.server.schemas import GenerateParameters, GenerateRequest
from lorafleet.runtime.types import (
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenEvent,
    TokenInfo,
)


def sampling_params(p: GenerateParameters) -> SamplingParams:
    """TGI `parameters` → the engine's `SamplingParams` (same names, same meaning)."""
    return SamplingParams(
        max_new_tokens=p.max_new_tokens,
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        seed=p.seed,
        stop=tuple(p.stop),
        top_n_tokens=p.top_n_tokens or 0,
        ignore_eos=p.ignore_eos,
    )


def generation_request(body: GenerateRequest) -> GenerationRequest:
    p = body.parameters
    return GenerationRequest(
        prompt=body.inputs,
        params=sampling_params(p),
        adapter_id=p.adapter_id or None,
        truncate=p.truncate,
        decoder_input_details=p.decoder_input_details,
    )


def token_json(token: TokenInfo, *, text: str | None = None) -> dict[str, Any]:
    return {
        "id": token.id,
        "text": token.text if text is None else text,
        "logprob": token.logprob,
        "special": token.special,
    }


def prefill_json(token: TokenInfo) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob}


def full_text(body: GenerateRequest, generated_text: str) -> str:
    """`generated_text`, prefixed by the prompt when `return_full_text` is set."""
    return body.inputs + generated_text if body.parameters.return_full_text else generated_text


def generate_response(body: GenerateRequest, result: GenerationResult) -> dict[str, Any]:
    """The body of a `/generate` answer (`details` only when asked for, as TGI does)."""
    response: dict[str, Any] = {"generated_text": full_text(body, result.generated_text)}
    if body.parameters.details or body.parameters.decoder_input_details:
        details: dict[str, Any] = {
            "finish_reason": result.finish_reason.value,
            "generated_tokens": len(result.tokens),
            "seed": result.seed,
            "prefill": [prefill_json(t) for t in result.prompt_tokens]
            if body.parameters.decoder_input_details
            else [],
            "tokens": [token_json(t) for t in result.tokens],
        }
        if result.top_tokens and any(result.top_tokens):
            details["top_tokens"] = [[token_json(t) for t in step] for step in result.top_tokens]
        response["details"] = details
    return response


def stream_event(body: GenerateRequest, event: TokenEvent) -> dict[str, Any]:
    """One SSE event of `/generate_stream`; the last one carries the text and details.

    `token.text` is the newly decodable text, so the texts of a stream concatenate to the
    generated text even when a character spans several tokens.
    """
    payload: dict[str, Any] = {
        "index": event.index,
        "token": token_json(event.token, text=event.text),
        "generated_text": None,
        "details": None,
    }
    if event.top_tokens:
        payload["top_tokens"] = [token_json(t) for t in event.top_tokens]
    if event.result is not None:
        result = event.result
        payload["generated_text"] = full_text(body, result.generated_text)
        payload["details"] = {
            "finish_reason": result.finish_reason.value,
            "generated_tokens": len(result.tokens),
            "seed": result.seed,
            "input_length": result.num_prompt_tokens,
        }
    return payload
