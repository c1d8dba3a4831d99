"""The adapter admin API (vLLM's names): load, unload and list adapters on a running replica.

`POST /v1/load_lora_adapter {"lora_name", "lora_path", "revision"?}` reads the adapter (a folder
the replica can read, or a Hub repo id), validates it against the base and serves it under
`lora_name` from the next request on; loading a name again with different files replaces it
(running requests finish on the old version). `POST /v1/unload_lora_adapter {"lora_name"}` stops
serving it. `GET /v1/lora_adapters` lists every servable adapter with its digest and whether it
is in device memory now. Like every route but `/health`, these need the replica's key: the
control plane calls them to converge replicas to the endpoint's adapter set; the gateway never
forwards them to clients.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter
from lorafleet.runtime.errors import EngineValidationError
from lorafleet.runtime.server.context import ServerContext
from lorafleet.runtime.server.errors import InputValidationError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

# What a request can name: Hub-repo-like characters, as the control plane's adapter names are.
ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
MAX_SOURCE_CHARS = 4096


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(pattern=ADAPTER_NAME)
    lora_path: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    revision: str | None = Field(default=None, min_length=1, max_length=256)


class UnloadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(pattern=ADAPTER_NAME)


def admin_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/load_lora_adapter")
    async def load(body: LoadAdapterRequest) -> dict[str, Any]:
        engine = ctx.holder.require()
        if "\x00" in body.lora_path or re.search(r"(^|/)\.\.(/|$)", body.lora_path):
            raise InputValidationError("`lora_path` must be a folder path without `..` or a Hub repo id")
        try:  # reads files (or the Hub): off the event loop
            version = await asyncio.to_thread(
                engine.load_adapter, body.lora_name, body.lora_path, body.revision
            )
        except EngineValidationError as e:
            raise InputValidationError(str(e)) from e
        return {"lora_name": version.name, "digest": version.digest}

    @router.post("/v1/unload_lora_adapter")
    def unload(body: UnloadAdapterRequest) -> dict[str, Any]:
        version = ctx.holder.require().unload_adapter(body.lora_name)
        if version is None:
            raise NotFoundError(f"adapter {body.lora_name!r} is not loaded on this replica")
        return {"lora_name": version.name, "digest": version.digest}

    @router.get("/v1/lora_adapters")
    def listing() -> dict[str, Any]:
        adapters = ctx.holder.require().list_adapters()
        return {
            "data": [
                {"name": a.name, "digest": a.digest, "resident": a.resident, "pinned": a.pinned}
                for a in adapters
            ]
        }

    return router
