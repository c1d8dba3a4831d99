"""TGI's routes: `/generate`, `/generate_stream`, `/` (compat), `/tokenize`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from lorafleet.runtime.server import tgi_format
from lorafleet.runtime.server.context import ServerContext
from lorafleet.runtime.server.errors import InputValidationError, ServerError
from lorafleet.runtime.server.generation import ClientDisconnected, RunningRequest, wait_for_disconnect
from lorafleet.runtime.server.openai_schemas import ChatCompletionRequest
from lorafleet.runtime.server.schemas import CompatGenerateRequest, GenerateRequest, TokenizeRequest
from lorafleet.runtime.server.sse import EventStreamResponse, sse_event
from lorafleet.runtime.tokenizer import LONE_SURROGATE
from pydantic import BaseModel, ValidationError

CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away"; never seen by the client
TOKENIZE_CONCURRENCY = 2  # /tokenize runs in worker threads; its memory grows with the input
TOKENS_PER_JSON_SLICE = 4096


def tgi_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    async def generate(body: GenerateRequest, request: Request) -> dict[str, Any] | None:
        """The `/generate` answer, or None when the client left (its request is cancelled)."""
        running = await ctx.service.admit(tgi_format.generation_request(body))
        try:
            result = await ctx.service.complete(running, wait_for_disconnect(request.receive))
        except ClientDisconnected:
            return None
        return tgi_format.generate_response(body, result)

    async def generate_stream(body: GenerateRequest) -> Response:
        if body.parameters.decoder_input_details:
            raise InputValidationError(
                "`decoder_input_details` == true is not supported when streaming tokens"
            )
        running = await ctx.service.admit(tgi_format.generation_request(body))
        return EventStreamResponse(_tgi_events(ctx, body, running), on_close=running.release)

    @router.post("/generate")
    async def generate_route(body: GenerateRequest, request: Request) -> Response:
        answer = await generate(body, request)
        return Response(status_code=CLIENT_CLOSED_REQUEST) if answer is None else JSONResponse(answer)

    @router.post("/generate_stream")
    async def generate_stream_route(body: GenerateRequest) -> Response:
        return await generate_stream(body)

    @router.post("/")
    async def compat_generate(request: Request) -> Response:
        """TGI's `POST /`: `/generate` (as a one-element list) or its stream, by `stream`.

        A `messages` body is served as a chat completion: `huggingface_hub` 0.24-0.27 posts
        chat requests to the endpoint URL itself.
        """
        payload = await _json_body(request)
        if isinstance(payload, dict) and "messages" in payload:
            from lorafleet.runtime.server.routes_openai import chat_completion

            return await chat_completion(ctx, _parse(ChatCompletionRequest, payload), request)
        body = _parse(CompatGenerateRequest, payload)
        if body.stream:
            return await generate_stream(body)
        answer = await generate(body, request)
        return Response(status_code=CLIENT_CLOSED_REQUEST) if answer is None else JSONResponse([answer])

    tokenize_slots = asyncio.Semaphore(TOKENIZE_CONCURRENCY)

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Response:
        """TGI's `/tokenize`, linear in the input and off the event loop (the body is already
        bounded by the payload limit); the JSON is built in the worker thread too."""
        tokenizer = ctx.holder.require().tokenizer
        async with tokenize_slots:
            content = await asyncio.to_thread(tokenize_json, tokenizer, body.inputs, body.add_special_tokens)
        return Response(content, media_type="application/json")

    return router


async def _tgi_events(
    ctx: ServerContext, body: GenerateRequest, running: RunningRequest
) -> AsyncIterator[bytes]:
    """SSE body of `/generate_stream`; errors after the headers go out as an event, as TGI does."""
    try:
        async for event in ctx.service.events(running):
            yield sse_event(tgi_format.stream_event(body, event))
    except ServerError as e:
        yield sse_event(e.to_json())


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as e:
        raise InputValidationError(f"request body is not valid JSON: {e}") from e


def _parse(model: type[BaseModel], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from e


def tokenize_json(tokenizer: Any, text: str, add_special_tokens: bool) -> bytes:
    """The `/tokenize` answer as JSON bytes: `[{"id", "text", "start", "stop"}]` (`Tokenizer.token_spans`)."""
    if LONE_SURROGATE.search(text):
        raise InputValidationError("`inputs` is not valid Unicode: it holds a lone surrogate")
    tokens = [
        {"id": i, "text": piece, "start": start, "stop": stop}
        for i, piece, start, stop in tokenizer.token_spans(text, add_special_tokens)
    ]
    # json.dumps holds the GIL for its whole run: serialise in slices so the event loop gets turns.
    slices = range(0, len(tokens), TOKENS_PER_JSON_SLICE)
    parts = [json.dumps(tokens[at : at + TOKENS_PER_JSON_SLICE], ensure_ascii=False)[1:-1] for at in slices]
    return f"[{','.join(parts)}]".encode()
