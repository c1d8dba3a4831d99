"""Plumbing shared by the dashboard's routes: templates, assets, the session sealer, sign-in gate.

Every page goes through `signed_in()`: it opens the session cookie and re-checks the API token in
it with the control plane's own `authenticate()` (the check the REST routes make), so a revoked
token ends its dashboard sessions at once. Every POST also goes through `check_csrf()`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from lorafleet.controlplane.auth.service import Principal, authenticate
from lorafleet.controlplane.dashboard.session import (
    COOKIE_NAME,
    CSRF_FIELD,
    CSRF_HEADER,
    DashboardSession,
    SessionConfig,
    SessionSealer,
)
from lorafleet.controlplane.errors import ControlPlaneError, UnauthorizedError
from lorafleet.controlplane.secretbox import SecretBox
from sqlalchemy.orm import Session

PREFIX = "/dashboard"
PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))


class DashboardError(ControlPlaneError):
    """Root of errors the dashboard raises itself (bad CSRF token, unreadable form)."""


class CsrfError(DashboardError):
    status_code = 403


class SignInRequired(DashboardError):
    """No valid session: pages redirect to the sign-in page, partials answer 401."""

    status_code = 401


@lru_cache(maxsize=32)
def asset_url(name: str) -> str:
    """URL of a static file with a content hash, so browsers never run a stale script."""
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]
    return f"{PREFIX}/static/{name}?v={digest}"


templates.env.globals.update(asset_url=asset_url, base=PREFIX)


def _secret_key_material(settings: Any) -> str:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    # Same fallback as the endpoint secrets: a random key created once under LORAFLEET_HOME.
    SecretBox.from_key_file(settings.secret_key_file)
    return settings.secret_key_file.read_text().strip()


def sealer(request: Request) -> SessionSealer:
    """The app's one `SessionSealer`, made on first use from the control plane's settings."""
    state = request.app.state
    existing = getattr(state, "dashboard_sealer", None)
    if existing is None:
        settings = state.settings
        existing = SessionSealer(SessionConfig(secret_key=_secret_key_material(settings)))
        state.dashboard_sealer = existing
    return existing


@dataclass(frozen=True)
class Caller:
    """A signed-in browser: its session (for the CSRF token) and its API principal."""

    session: DashboardSession
    principal: Principal
    csrf: str

    @property
    def token(self) -> str:
        return self.session.token


def browser_session(request: Request) -> DashboardSession | None:
    return sealer(request).open(request.cookies.get(COOKIE_NAME))


def signed_in(request: Request, db: Session) -> Caller:
    """The caller behind the session cookie.

    Raises:
        SignInRequired: no cookie, a forged or expired one, or a token that is no longer valid.
    """
    session = browser_session(request)
    if session is None or not session.token:
        raise SignInRequired("sign in with an API token first")
    try:
        principal = authenticate(db, f"Bearer {session.token}")
    except UnauthorizedError as e:
        raise SignInRequired(f"your session ended: {e.message}") from e
    return Caller(session=session, principal=principal, csrf=sealer(request).csrf_token(session))


async def check_csrf(request: Request) -> None:
    """Refuses a POST whose CSRF token (form field or header) does not belong to its session.

    Raises:
        CsrfError: missing session, or a missing or wrong token.
    """
    session = browser_session(request)
    candidate = request.headers.get(CSRF_HEADER)
    if candidate is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        candidate = value if isinstance(value, str) else None
    if session is None or not sealer(request).csrf_ok(session, candidate):
        raise CsrfError("the form's security token is missing or stale: reload the page and try again")


SECURITY_HEADERS = {
    # Our own assets only, no framing (clickjacking), forms post only to us.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "script-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                                "base-uri 'none'; object-src 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def set_session_cookie(request: Request, response: Response, session: DashboardSession) -> None:
    box = sealer(request)
    options = box.cookie_options(https=request.url.scheme == "https")
    response.set_cookie(COOKIE_NAME, box.seal(session), **options)  # type: ignore[arg-type]


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path=PREFIX, httponly=True, samesite="strict")


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200,
           caller: Caller | None = None) -> HTMLResponse:
    """Renders a page with the signed-in user (for the header and its sign-out form)."""
    base: dict[str, Any] = {"user": None, "csrf": "", "notice": None, "page_error": None}
    if caller is not None:
        base.update(user=caller.principal, csrf=caller.csrf)
    response = templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def safe_next(target: str | None) -> str:
    """A dashboard path to go to after sign-in; anything else (another site, `//host`) is dropped."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target[len(PREFIX):]
    return ""


def redirect(path: str) -> RedirectResponse:
    """A 303 to a dashboard path (Post/Redirect/Get)."""
    return RedirectResponse(f"{PREFIX}{path}", status_code=303)


def refuse(request: Request, error: DashboardError) -> Response:
    """How dashboard errors reach the browser: a sign-in redirect for pages, plain codes otherwise."""
    wants_page = request.method == "GET" and "/partials/" not in request.url.path
    response: Response
    if isinstance(error, SignInRequired) and wants_page:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = redirect("/signin" if here == PREFIX else f"/signin?{urlencode({'next': here})}")
    elif request.headers.get("accept", "").startswith("application/json"):
        response = JSONResponse(error.to_json(), status_code=error.status_code)
    else:
        title = "Sign in required" if isinstance(error, SignInRequired) else "Request refused"
        response = render(request, "error.html", {"title": title, "message": error.message},
                          status_code=error.status_code)
    if isinstance(error, SignInRequired):
        clear_session_cookie(response)  # an expired or revoked session is of no further use
    return response
