"""Sign-in with an API token, and sign-out.

The sign-in form carries a CSRF token too: `GET /dashboard/signin` gives the browser an anonymous
session (a sealed cookie with no token), and the form's token is bound to it. That stops a
cross-site page from signing a victim into the attacker's namespace ("login CSRF").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import Response
from lorafleet.controlplane.auth.service import authenticate
from lorafleet.controlplane.dashboard.routing import CsrfChecked, router
from lorafleet.controlplane.dashboard.web import (
    PREFIX,
    browser_session,
    clear_session_cookie,
    redirect,
    render,
    safe_next,
    sealer,
    set_session_cookie,
)
from lorafleet.controlplane.deps import SessionDep
from lorafleet.controlplane.errors import UnauthorizedError


def _signin_page(request: Request, *, next_path: str = "", error: str | None = None,
                 status_code: int = 200) -> Response:
    box = sealer(request)
    session = browser_session(request)
    if session is None or session.token:
        session = box.new_session(token="", namespace="")
    context = {"csrf": box.csrf_token(session), "errors": {"token": error} if error else {},
               "next_path": next_path}
    response = render(request, "signin.html", context, status_code=status_code)
    set_session_cookie(request, response, session)
    return response


@router.get("/signin")
def signin_form(request: Request, next: str = "") -> Response:
    next_path = PREFIX + safe_next(next)
    session = browser_session(request)
    if session is not None and session.token:
        # Already signed in; if the token was revoked meanwhile, the page clears the cookie and
        # sends the browser back here.
        return redirect(safe_next(next_path))
    return _signin_page(request, next_path=next_path)


@router.post("/signin", dependencies=[CsrfChecked])
def signin(request: Request, db: SessionDep, token: Annotated[str, Form()] = "",
           next: Annotated[str, Form()] = "") -> Response:
    token = token.strip()
    next_path = PREFIX + safe_next(next)
    if not token:
        return _signin_page(request, next_path=next_path, error="Enter an API token.", status_code=400)
    try:
        principal = authenticate(db, f"Bearer {token}")
    except UnauthorizedError as e:
        return _signin_page(request, next_path=next_path, error=f"Sign-in refused: {e.message}.",
                            status_code=401)
    # A fresh session id on sign-in, so a CSRF token seen before sign-in is worthless after it.
    session = sealer(request).new_session(token=token, namespace=principal.namespace)
    response = redirect(safe_next(next_path))
    set_session_cookie(request, response, session)
    return response


@router.post("/signout", dependencies=[CsrfChecked])
def signout(request: Request) -> Response:
    response = redirect("/signin")
    clear_session_cookie(response)
    return response
