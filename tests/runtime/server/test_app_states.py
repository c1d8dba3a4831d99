"""The app before the model is ready, and a request the engine fails mid-generation.

These run the app in-process (httpx's ASGI transport, no lifespan, so no model loads). The
engine failure is a small stand-in object — a real engine cannot be made to fail on demand —
and only checks how the server reports `GenerationError` (424 / an SSE error event).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from lorafleet.runtime.args import EngineArgs
from lorafleet.runtime.engine import (
    GenerationError,
    GenerationRequest,
    PreparedRequest,
    TokenEvent,
    TokenInfo,
)
from lorafleet.runtime.server.app import create_app
from lorafleet.runtime.server.config import ServerConfig


def make_client(engine: object | None = None) -> httpx.AsyncClient:
    app = create_app(ServerConfig(EngineArgs("unused")))
    app.state.context.holder.engine = engine
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_before_the_model_loads_health_is_503_and_generation_is_refused():
    async with make_client() as client:
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["error_type"] == "unhealthy"
        generate = await client.post("/generate", json={"inputs": "hi"})
        assert generate.status_code == 503
        metrics = (await client.get("/metrics")).text
        assert "lorafleet_ready 0.0" in metrics and "lorafleet_queue_size 0.0" in metrics


class FailingEngine:
    """Accepts every request, emits one token, then fails it as the engine reports failures."""

    info = type("Info", (), {"model_id": "stand-in"})()
    failure = None  # the engine can still serve (no shard died)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        return PreparedRequest(request, (1, 2), max_new_tokens=4, seed=None)

    async def stream(self, request: PreparedRequest) -> AsyncIterator[TokenEvent]:
        yield TokenEvent(index=1, token=TokenInfo(id=5, text="a", logprob=-1.0), text="a")
        raise GenerationError("device fell over")

    def stats(self) -> None:
        return None


async def test_a_generation_failure_is_424_on_generate_and_an_error_event_on_streams():
    async with make_client(FailingEngine()) as client:
        response = await client.post("/generate", json={"inputs": "hi"})
        assert response.status_code == 424
        assert response.json() == {
            "error": "Request failed during generation: device fell over",
            "error_type": "generation",
        }
        stream = await client.post("/generate_stream", json={"inputs": "hi"})
        events = [
            json.loads(line[len("data:") :]) for line in stream.text.splitlines() if line.startswith("data:")
        ]
        assert events[0]["token"]["text"] == "a"
        assert events[-1]["error_type"] == "generation"
        chat = await client.post("/v1/completions", json={"prompt": "hi", "stream": True})
        assert chat.text.rstrip().endswith("data: [DONE]") and '"error_type":"generation"' in chat.text
