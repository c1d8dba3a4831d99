"""`create_gateway_app(settings)`: the gateway alone, for `lorafleet gateway serve`.

Stateless: it needs the control plane's database (`LORAFLEET_DATABASE_URL`, at the newest schema
revision) and secret key (`LORAFLEET_SECRET_KEY`, to open the replicas' keys), nothing else; any
number of them may run behind a load balancer beside the control plane. Routes: `/endpoints/...`,
`/metrics` (bearer token) and `/health`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from lorafleet.controlplane.db import Database, check_migrated
from lorafleet.controlplane.gateway.asgi import EndpointsFirst
from lorafleet.controlplane.gateway.errors import GatewayError
from lorafleet.controlplane.gateway.service import Gateway
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_gateway_app(settings: Settings | None = None) -> Starlette:
    """Builds a gateway process. Refuses (raises `NotMigratedError`) on an unmigrated database.

    Example:
        >>> app = create_gateway_app(Settings(database_url="postgresql+psycopg://cp@db/lorafleet"))
        >>> uvicorn.run(app, port=8080)
    """
    settings = settings or Settings()
    database = Database(settings.resolved_database_url, settings.sqlite_busy_timeout_s)
    check_migrated(database.engine)
    gateway = Gateway(settings, database, SecretBox.from_settings(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()
            database.dispose()

    async def health(request: Request) -> Response:
        body = {"status": "ok", "gateway": gateway.gateway_id, "loaded": gateway.registry.loaded}
        return JSONResponse(body)

    async def metrics(request: Request) -> Response:
        try:
            text = await gateway.metrics(request.headers.get("authorization"))
        except GatewayError as e:
            return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
        return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)

    app = Starlette(routes=[Route("/health", health), Route("/metrics", metrics)], lifespan=lifespan)
    app.add_middleware(EndpointsFirst, gateway_app=gateway.app)
    app.state.gateway = gateway
    return app
