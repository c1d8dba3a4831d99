"""FastAPI dependencies: the per-request session, the caller, and the app's shared objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from lorafleet.controlplane.auth.service import Principal, authenticate
from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.endpoints.service import WAKE_FLAG, EndpointService
from sqlalchemy.orm import Session


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: committed when the route returns (before the response is sent),
    rolled back if it raises; then the reconciler is woken if the request changed an endpoint."""
    database: Database = request.app.state.database
    with database.session() as session:
        yield session
        wake = session.info.pop(WAKE_FLAG, False)
    if wake:
        request.app.state.wake_reconciler()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_principal(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    return authenticate(session, authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_hardware(request: Request) -> Hardware:
    return request.app.state.hardware


HardwareDep = Annotated[Hardware, Depends(get_hardware)]


def get_endpoint_service(request: Request) -> EndpointService:
    return request.app.state.endpoint_service


EndpointServiceDep = Annotated[EndpointService, Depends(get_endpoint_service)]
