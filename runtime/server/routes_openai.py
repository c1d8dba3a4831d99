"""OpenAI's routes: `/v1/chat/completions`, `/v1/completions` (streaming included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from lorafleet.runtime.server import openai_format as fmt
from lorafleet.runtime.server.context import ServerContext
from lorafleet.runtime.server.errors import InputValidationError, ServerError
from lorafleet.runtime.server.generation import ClientDisconnected, RunningRequest, wait_for_disconnect
from lorafleet.runtime.server.openai_schemas import ChatCompletionRequest, CompletionRequest
from lorafleet.runtime.server.sse import DONE, EventStreamResponse, sse_event
from lorafleet.runtime.types import GenerationRequest, GenerationResult, TokenEvent

CLIENT_CLOSED_REQUEST = 499


def openai_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat_completion(ctx, body, request)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        engine = ctx.holder.require()
        generation = fmt.completion_request(body, engine.info.model_id)
        model = body.model or engine.info.model_id
        running = await ctx.service.admit(generation)  # first: it bounds the prompt's length
        prompt_text = body.prompt_input() if isinstance(body.prompt_input(), str) else ""
        if body.echo and not isinstance(generation.prompt, str):
            prompt_text = engine.tokenizer.decode(list(generation.prompt))
        if body.stream:
            stream = _completion_chunks(ctx, body, running, model, str(prompt_text))
            return EventStreamResponse(stream, on_close=running.release)
        result = await _complete(ctx, running, request)
        if result is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(fmt.completion_response(body, result, model, str(prompt_text)))

    return router


async def chat_completion(ctx: ServerContext, body: ChatCompletionRequest, request: Request) -> Response:
    """Serves one chat completion (also reached from `POST /` with a `messages` body)."""
    engine = ctx.holder.require()
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - template errors (bad roles, ...) are the caller's input
        raise InputValidationError(f"`messages` cannot be rendered by the chat template: {e}") from e
    generation: GenerationRequest = fmt.chat_request(body, prompt, engine.info.model_id)
    model = body.model if body.model and body.model not in ("dummy",) else engine.info.model_id
    running = await ctx.service.admit(generation)
    if body.stream:
        return EventStreamResponse(_chat_chunks(ctx, body, running, model), on_close=running.release)
    result = await _complete(ctx, running, request)
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return JSONResponse(fmt.chat_response(body, result, model))


async def _complete(ctx: ServerContext, running: RunningRequest, request: Request) -> GenerationResult | None:
    try:
        return await ctx.service.complete(running, wait_for_disconnect(request.receive))
    except ClientDisconnected:
        return None


def _chat_choice(body: ChatCompletionRequest, event: TokenEvent) -> dict[str, Any]:
    logprobs = None
    if body.logprobs:
        logprobs = fmt.chat_logprobs((event.token,), (event.top_tokens,))
        logprobs["content"][0].update(fmt.logprob_entry(event.token, event.text))
    return {
        "index": 0,
        "delta": {"role": "assistant", "content": event.text, "tool_calls": None},
        "logprobs": logprobs,
        "finish_reason": fmt.finish_reason(event.finish_reason) if event.finish_reason else None,
    }


async def _chat_chunks(
    ctx: ServerContext, body: ChatCompletionRequest, running: RunningRequest, model: str
) -> AsyncIterator[bytes]:
    envelope = fmt.envelope("chat.completion.chunk", model)  # one id for the whole stream
    try:
        async for event in ctx.service.events(running):
            yield sse_event({**envelope, "choices": [_chat_choice(body, event)]})
            if event.result is not None and body.include_usage():
                yield sse_event({**envelope, "choices": [], "usage": fmt.usage(event.result)})
    except ServerError as e:
        yield sse_event(e.to_json())
    yield DONE


async def _completion_chunks(
    ctx: ServerContext, body: CompletionRequest, running: RunningRequest, model: str, prompt_text: str
) -> AsyncIterator[bytes]:
    envelope = fmt.envelope("text_completion", model)

    def chunk(text: str, finish: str | None, logprobs: dict[str, Any] | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse_event({**envelope, "choices": [choice]})

    try:
        if body.echo and prompt_text:
            yield chunk(prompt_text, None)
        async for event in ctx.service.events(running):
            finish = fmt.finish_reason(event.finish_reason) if event.finish_reason else None
            logprobs = None
            if body.logprobs is not None:
                logprobs = fmt.completion_logprobs(
                    (event.token,), (event.top_tokens,) if body.logprobs else ()
                )
            yield chunk(event.text, finish, logprobs)
            if event.result is not None and body.include_usage():
                yield sse_event({**envelope, "choices": [], "usage": fmt.usage(event.result)})
    except ServerError as e:
        yield sse_event(e.to_json())
    yield DONE
