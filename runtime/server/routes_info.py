"""Read-only routes: `/health` (and `/ping`, `GET /`), `/info`, `/metrics`, `/v1/models`."""

from __future__ import annotations

import time
from typing import Any

import lorafleet.runtime.server as server_package
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from lorafleet.runtime.server.context import ServerContext
from lorafleet.runtime.server.errors import NotReadyError
from lorafleet.runtime.server.schemas import MAX_STOP_SEQUENCES, MAX_TOP_N_TOKENS
from prometheus_client import CONTENT_TYPE_LATEST

STARTED_AT = int(time.time())


def info_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    def health() -> Response:
        """200 once the model is loaded; 503 (with what is loading) before."""
        try:
            ctx.holder.require()
        except NotReadyError as e:
            return JSONResponse(e.to_json(), status_code=e.status_code)
        return JSONResponse({})

    router.add_api_route("/health", health, methods=["GET"])
    router.add_api_route("/ping", health, methods=["GET"])
    router.add_api_route("/", health, methods=["GET"])

    @router.get("/info")
    def info() -> dict[str, Any]:
        return info_payload(ctx)

    @router.get("/metrics")
    def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/models")
    def models() -> dict[str, Any]:
        """The base, then every adapter in device memory now (`parent` = the base), with its digest."""
        engine = ctx.holder.require()
        base = engine.info.model_id
        data = [{"id": base, "object": "model", "created": STARTED_AT, "owned_by": "lorafleet", "root": base}]
        for adapter in engine.list_adapters():
            if adapter.resident:
                data.append(
                    {
                        "id": adapter.name,
                        "object": "model",
                        "created": STARTED_AT,
                        "owned_by": "lorafleet",
                        "root": adapter.name,
                        "parent": base,
                        "digest": adapter.digest,
                    }
                )
        return {"object": "list", "data": data}

    return router


def info_payload(ctx: ServerContext) -> dict[str, Any]:
    """TGI's `/info` fields, plus the engine's limits and the loaded adapters."""
    engine = ctx.holder.require()
    i = engine.info
    return {
        "model_id": i.model_id,
        "model_sha": i.model_sha,
        "architecture": i.architecture,
        "model_dtype": i.dtype,
        "model_device_type": i.device,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": ctx.config.max_concurrent_requests,
        "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_top_n_tokens": MAX_TOP_N_TOKENS,
        "max_input_tokens": i.max_input_tokens,
        "max_input_length": i.max_input_tokens,
        "max_total_tokens": i.max_total_tokens,
        "max_batch_prefill_tokens": i.max_batch_prefill_tokens,
        "max_batch_total_tokens": i.max_batch_total_tokens,
        "max_loaded_adapters": i.max_loaded_adapters,
        "block_size": i.block_size,
        "num_kv_blocks": i.num_kv_blocks,
        "num_shard": i.num_shard,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "lorafleet-runtime",
        "version": server_package.__version__,
        "sha": None,
        "docker_label": None,
        "adapters": list(engine.loaded_adapters()),
        "memory": {
            "weights_bytes": i.memory.weights,
            "adapter_bytes": i.memory.adapters,
            "adapter_bytes_used": engine.stats().adapter_bytes_used,
            "kv_cache_bytes": i.memory.kv_cache,
            "reserve_bytes": i.memory.reserve,
        },
        "lora_adapters": [s.adapter_id for s in ctx.config.engine.adapters],
    }
