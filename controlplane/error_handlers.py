"""How every error leaves the control plane: always a JSON body `{"error": ..., ...}`.

Errors raised on purpose (`ControlPlaneError`) carry their status; validation errors are 422 with
the field paths; a database that is busy (SQLite's single writer held past the busy timeout) or
unreachable is a 503 with `Retry-After`; anything else is a 500 whose body names a reference to
the logged traceback, never the exception's text (it may hold SQL, paths or values).
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from lorafleet.controlplane.errors import ControlPlaneError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lorafleet.controlplane")
RETRY_AFTER_S = "1"


def _field_path(location: tuple[object, ...]) -> str:
    parts = [str(p) for p in location if p not in ("body",)]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": _field_path(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return JSONResponse(status_code=422, content={"error": f"invalid request: {summary}", "errors": errors})


async def _control_plane_error(request: Request, exc: ControlPlaneError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content=exc.to_json())


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)


async def _database_error(request: Request, exc: OperationalError) -> JSONResponse:
    busy = "locked" in str(exc.orig) or "busy" in str(exc.orig)
    log.warning("database %s during %s %s: %s", "busy" if busy else "error", request.method,
                request.url.path, exc.orig)
    message = ("the database is busy with another write; retry shortly" if busy
               else "the database is unavailable; retry shortly")
    return JSONResponse(status_code=503, headers={"Retry-After": RETRY_AFTER_S},
                        content={"error": message, "error_type": "database_busy" if busy else "database"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s during %s %s", reference, request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={
        "error": f"internal error: the control plane logged it as {reference}", "error_type": "internal",
        "reference": reference,
    })


def install(app: FastAPI) -> None:
    """Registers the handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ControlPlaneError, _control_plane_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
