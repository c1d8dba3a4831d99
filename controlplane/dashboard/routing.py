"""The dashboard's router and the dependencies its routes share."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from lorafleet.controlplane.dashboard.web import Caller, DashboardError, check_csrf, refuse, signed_in
from lorafleet.controlplane.deps import SessionDep


class DashboardRoute(APIRoute):
    """Turns dashboard errors (no session, bad CSRF token) into pages, redirects or 401s."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except DashboardError as error:
                return refuse(request, error)

        return guarded


router = APIRouter(prefix="/dashboard", route_class=DashboardRoute, include_in_schema=False)


def get_caller(request: Request, db: SessionDep) -> Caller:
    return signed_in(request, db)


CallerDep = Annotated[Caller, Depends(get_caller)]
CsrfChecked = Depends(check_csrf)
