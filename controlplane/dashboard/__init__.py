"""The web dashboard, served by the control plane at `/dashboard`.

Jinja2 pages with a little plain JavaScript and our own CSS (no build step, no CDN). Every
operation goes through the same endpoint service as the REST API, so validation and messages are
identical. Sessions: see `session.py`.

Example:
    >>> from lorafleet.controlplane.dashboard import mount
    >>> mount(app)   # in create_app(): pages under /dashboard, assets under /dashboard/static
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from lorafleet.controlplane.dashboard import routes_actions, routes_auth, routes_pages  # noqa: F401  (routes)
from lorafleet.controlplane.dashboard.routing import router
from lorafleet.controlplane.dashboard.web import STATIC_DIR

__all__ = ["mount", "router"]


def mount(app: FastAPI) -> None:
    """Serves the dashboard from `app`: its pages under `/dashboard`, its assets under `/dashboard/static`.

    Needs `app.state.settings`, `app.state.database`, `app.state.hardware` and
    `app.state.endpoint_service` (set by the control plane's `create_app`).
    """
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.include_router(router)
