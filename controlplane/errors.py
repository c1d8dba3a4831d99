"""The control plane's one error root; `app.py` renders every subclass as JSON `{"error": ...}`."""

from __future__ import annotations

from typing import Any


class ControlPlaneError(Exception):
    """Base of every error the control plane raises on purpose.

    Args:
        message: what went wrong, for the API client (never a secret).
        extra: more JSON fields for the response body (e.g. `{"available": [...]}`).
    """

    status_code: int = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class BadRequestError(ControlPlaneError):
    status_code = 400


class UnauthorizedError(ControlPlaneError):
    status_code = 401


class NotFoundError(ControlPlaneError):
    status_code = 404


class ConflictError(ControlPlaneError):
    status_code = 409


class NotMigratedError(ControlPlaneError):
    """The database schema is not at the newest Alembic revision; the server refuses to start."""

    status_code = 503
