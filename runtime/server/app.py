"""The FastAPI app of one replica."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from lorafleet.runtime.server import __version__
from lorafleet.runtime.server.config import ServerConfig
from lorafleet.runtime.server.context import ServerContext
from lorafleet.runtime.server.errors import install_error_handlers
from lorafleet.runtime.server.guard import ReplicaGuard
from lorafleet.runtime.server.loading import load_engine
from lorafleet.runtime.server.routes_admin import admin_router
from lorafleet.runtime.server.routes_info import info_router
from lorafleet.runtime.server.routes_openai import openai_router
from lorafleet.runtime.server.routes_tgi import tgi_router

logger = logging.getLogger("lorafleet.runtime.server")


def create_app(
    config: ServerConfig, *, load_on_startup: bool = True, on_fatal: Callable[[], None] | None = None
) -> FastAPI:
    """The app for `config`.

    Args:
        config: the parsed flags.
        load_on_startup: load the engine on a background thread when the app starts. The CLI
            passes False and loads it from the main thread itself (`app.state.context.holder`).
        on_fatal: called if that background load fails.
    """
    ctx = ServerContext.create(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_on_startup:
            ctx.holder.start_loading(
                lambda progress: load_engine(config, progress), on_fatal or (lambda: None)
            )
        try:
            yield
        finally:
            logger.info("shutting down the engine")
            ctx.holder.shutdown()

    app = FastAPI(title="lorafleet runtime", version=__version__, lifespan=lifespan)
    app.state.context = ctx
    # Before routing: unauthenticated requests and oversized bodies never reach a route.
    app.add_middleware(ReplicaGuard, api_key=config.api_key, payload_limit=config.payload_limit)
    install_error_handlers(app)
    app.include_router(info_router(ctx))
    app.include_router(admin_router(ctx))
    app.include_router(tgi_router(ctx))
    app.include_router(openai_router(ctx))
    return app
