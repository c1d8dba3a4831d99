"""Server-sent events: framing, and a response that always cleans up after its stream.

Framing is `data: <json>\\n\\n`. OpenAI streams end with `data: [DONE]` *with* the space:
`huggingface_hub` compares the stripped line to exactly `data: [DONE]` and crashes on
`data:[DONE]` (see hf-endpoints-contract.md §3.3). TGI's own streams send no `[DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    """One SSE event carrying `payload` as compact JSON."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response whose `on_close` runs however the response ends.

    Starlette cancels the body when the client disconnects; closing the body generator then
    closes the engine stream inside it, which cancels the request and frees its KV blocks.
    `on_close` also runs when the stream never started (headers could not be sent).
    """

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._body, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                self._on_close()
