"""`create_app(settings)`: the FastAPI application, its shared objects and the reconciler task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from lorafleet.controlplane import error_handlers
from lorafleet.controlplane.auth.router import router as auth_router
from lorafleet.controlplane.catalog.loader import load_catalog
from lorafleet.controlplane.catalog.router import router as catalog_router
from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.db import Database, check_migrated
from lorafleet.controlplane.endpoints.local_paths import LocalRoots
from lorafleet.controlplane.endpoints.quota import Quota
from lorafleet.controlplane.endpoints.router import router as endpoints_router
from lorafleet.controlplane.endpoints.service import EndpointService
from lorafleet.controlplane.gateway.asgi import EndpointsFirst
from lorafleet.controlplane.gateway.errors import GatewayError
from lorafleet.controlplane.gateway.service import Gateway
from lorafleet.controlplane.launchers import create_launcher
from lorafleet.controlplane.reconciler import Reconciler
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings, private_home

log = logging.getLogger("lorafleet.controlplane")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the control plane. Refuses (raises `NotMigratedError`) on an unmigrated database.

    Example:
        >>> app = create_app(Settings(database_url="sqlite:////tmp/cp.db"))
        >>> uvicorn.run(app, port=8000)
    """
    settings = settings or Settings()
    private_home(settings)
    database = Database(settings.resolved_database_url, settings.sqlite_busy_timeout_s)
    check_migrated(database.engine)
    launcher = create_launcher(settings)
    hardware = Hardware(load_catalog(settings.catalog), launcher)
    secret_box = SecretBox.from_settings(settings)
    reconciler = Reconciler(settings, database, launcher, hardware, secret_box)
    gateway = Gateway(settings, database, secret_box, wake_reconciler=reconciler.wake)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(reconciler.run(stop)) if settings.reconciler_enabled else None
        if settings.gateway_enabled:
            await gateway.start()
        try:
            yield
        finally:
            if settings.gateway_enabled:
                await gateway.stop()
            stop.set()
            if task is not None:
                await task
            launcher.close()
            database.dispose()

    app = FastAPI(
        title="lorafleet control plane",
        version="0.1.0",
        lifespan=lifespan,
        description="Hugging Face Inference Endpoints v2-compatible API for multi-LoRA endpoints.",
    )
    app.state.settings = settings
    app.state.database = database
    app.state.launcher = launcher
    app.state.hardware = hardware
    app.state.reconciler = reconciler
    app.state.gateway = gateway
    app.state.endpoint_service = EndpointService(
        hardware, secret_box, roots=LocalRoots(settings.local_root_paths), quota=Quota.from_settings(settings)
    )
    app.state.wake_reconciler = reconciler.wake
    error_handlers.install(app)
    app.include_router(endpoints_router)
    app.include_router(catalog_router)
    app.include_router(auth_router)
    __import__("lorafleet.controlplane.dashboard", fromlist=["mount"]).mount(app)  # dashboard: /dashboard
    if settings.gateway_enabled:  # every endpoint's URL: /endpoints/{namespace}/{name}
        app.add_middleware(EndpointsFirst, gateway_app=gateway.app)
        _metrics_route(app, gateway)
    _health_routes(app, reconciler)
    return app


def _metrics_route(app: FastAPI, gateway: Gateway) -> None:
    @app.get("/metrics", tags=["gateway"], summary="Gateway usage in Prometheus form (bearer token)")
    async def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        try:
            return PlainTextResponse(await gateway.metrics(authorization), media_type=PROMETHEUS_TEXT)
        except GatewayError as e:
            return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _health_routes(app: FastAPI, reconciler: Reconciler) -> None:
    @app.get("/health", tags=["health"], summary="Liveness (no auth)")
    def health() -> dict[str, object]:
        # `passes` counts finished reconciler loop iterations: a test that must see that nothing
        # happens waits for passes instead of sleeping.
        return {"status": "ok", "reconciler": {"passes": reconciler.passes, "leading": reconciler.leading}}

    @app.get("/api/agent-harnesses", include_in_schema=False)
    def agent_harnesses() -> JSONResponse:  # huggingface_hub 2.x probes this; a 404 is expected
        return JSONResponse(status_code=404, content={"error": "not found"})
