"""Runs one HTTP request through the engine: admission, validation, streaming, metrics, errors.

Every route (TGI and OpenAI) goes through `GenerationService`, so limits, error mapping and
per-adapter metrics behave the same whatever the client speaks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from lorafleet.runtime.errors import EngineValidationError, GenerationError
from lorafleet.runtime.server.errors import (
    GenerationFailedError,
    IncompleteGenerationError,
    InputValidationError,
    ServerError,
)
from lorafleet.runtime.server.metrics import ServerMetrics
from lorafleet.runtime.server.state import AdmissionGate, EngineHolder
from lorafleet.runtime.types import GenerationRequest, GenerationResult, PreparedRequest, TokenEvent

logger = logging.getLogger("lorafleet.runtime.server")


class ClientDisconnected(Exception):
    """The client went away; its request has been cancelled."""


@dataclass
class RunningRequest:
    """What the server knows about one admitted request while it runs."""

    prepared: PreparedRequest  # checked and tokenized once, at admission
    release: Callable[[], None]
    started: float = field(default_factory=time.perf_counter)


class GenerationService:
    """Admission, validation and streaming of generation requests, for every route."""

    def __init__(self, holder: EngineHolder, gate: AdmissionGate, metrics: ServerMetrics) -> None:
        self.holder, self.gate, self.metrics = holder, gate, metrics

    async def admit(self, request: GenerationRequest) -> RunningRequest:
        """Checks readiness, takes an admission slot, validates and tokenizes; raises a `ServerError`.

        The caller must eventually call `.release()` of the returned request (streams do it
        when the response closes); on error nothing is held.
        """
        try:
            engine = self.holder.require()
            release = self.gate.acquire()
        except ServerError as e:
            self.metrics.record_failure(e.error_type)
            raise
        try:
            # Tokenizing, and loading the adapter from disk or the Hub: keep it off the event loop.
            prepared = await asyncio.to_thread(engine.prepare, request)
        except EngineValidationError as e:
            release()
            self.metrics.record_failure("validation")
            raise InputValidationError(str(e)) from e
        except BaseException:
            release()
            raise
        return RunningRequest(prepared, release)

    async def events(
        self, running: RunningRequest, disconnected: Awaitable[None] | None = None
    ) -> AsyncIterator[TokenEvent]:
        """The token events of an admitted request; the last one has the result.

        Closing this iterator early (or `disconnected` completing) cancels the request in the
        engine. Engine failures of this request become `GenerationFailedError`.
        """
        engine = self.holder.require()
        request = running.prepared.request
        watcher = asyncio.ensure_future(disconnected) if disconnected is not None else None
        stream = engine.stream(running.prepared).__aiter__()
        num_generated, first_token_at, outcome = 0, None, "cancelled"
        result: GenerationResult | None = None
        try:
            while True:
                event = await _next_or_disconnect(stream, watcher)
                if event is None:
                    break
                num_generated = event.index
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                self.metrics.record_token()
                if event.result is not None:
                    result = event.result
                yield event
            if result is None:
                outcome = "error"
                self.metrics.record_failure("incomplete_generation")
                raise IncompleteGenerationError(
                    "Incomplete generation: the stream ended without a final token"
                )
            outcome = "ok"
        except EngineValidationError as e:  # e.g. an evicted adapter that no longer loads
            outcome = "error"
            self.metrics.record_failure("validation")
            raise InputValidationError(str(e)) from e
        except GenerationError as e:
            outcome = "error"
            self.metrics.record_failure("generation")
            logger.warning("generation failed (adapter %s): %s", request.adapter_id, e)
            raise GenerationFailedError(f"Request failed during generation: {e}") from e
        finally:
            if watcher is not None:
                watcher.cancel()
            try:
                await stream.aclose()
            except RuntimeError:  # still running its cancellation in the step task
                logger.debug("engine stream closed while its cancellation runs")
            self.metrics.record_finished(
                request.adapter_id,
                outcome,
                num_prompt_tokens=result.num_prompt_tokens if result else 0,
                num_generated=num_generated,
                started=running.started,
                first_token_at=first_token_at,
                finished=time.perf_counter(),
            )

    async def complete(
        self, running: RunningRequest, disconnected: Awaitable[None] | None = None
    ) -> GenerationResult:
        """Runs an admitted request to the end and releases its slot."""
        try:
            result = None
            async for event in self.events(running, disconnected):
                result = event.result or result
            assert result is not None  # events() raises otherwise
            return result
        finally:
            running.release()


async def _next_or_disconnect(
    stream: AsyncIterator[TokenEvent], watcher: asyncio.Future[None] | None
) -> TokenEvent | None:
    """The stream's next event, None at its end; raises `ClientDisconnected` if the client left."""
    if watcher is None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None
    step = asyncio.ensure_future(stream.__anext__())
    try:
        await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        step.cancel()  # the engine sees the cancellation and frees the request
        raise
    if not step.done():
        step.cancel()
        try:
            await step
        except (asyncio.CancelledError, StopAsyncIteration, Exception):  # noqa: BLE001 - we are leaving
            pass
        raise ClientDisconnected()
    try:
        return step.result()
    except StopAsyncIteration:
        return None


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Returns when the client closes the connection (the request body is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
