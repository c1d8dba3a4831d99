"""Dashboard sessions: an encrypted, authenticated cookie plus a CSRF token bound to it.

Choice: the session lives *in the cookie*, not on the server. The cookie is a Fernet token
(AES-128-CBC + HMAC-SHA256, with its own timestamp) whose key is derived with HKDF from the
control plane's `SECRET_KEY`, so

* it survives a control-plane restart and works with several control-plane processes behind a
  load balancer (no shared session store to own);
* the API token inside it is never readable by the browser or by anyone who copies the cookie
  out of a log (it is encrypted, and the cookie is HttpOnly);
* every request re-checks that token with the control plane's token service, so revoking the
  API token ends every dashboard session made with it at once;
* a session expires `max_age_s` after sign-in (Fernet's TTL), whatever the browser does.

The CSRF token is an HMAC (a second HKDF-derived key) of the session's random id: a page can
only be posted by someone who could read a page rendered for this very session. The cookie is
also `SameSite=Strict`, so a cross-site form post does not even carry it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE_NAME = "lorafleet_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class SessionConfig:
    """How dashboard sessions are sealed.

    Args:
        secret_key: the control plane's `SECRET_KEY`; only HKDF-derived keys are used from it.
        max_age_s: lifetime of a session after sign-in, in seconds.
        secure_cookie: set the cookie's `Secure` flag (serve the dashboard over HTTPS).
    """

    secret_key: str
    max_age_s: int = 12 * 3600
    secure_cookie: bool = False


@dataclass(frozen=True)
class DashboardSession:
    """What a signed-in browser carries: the API token it signed in with and its namespace."""

    session_id: str
    token: str
    namespace: str


def _derive(secret_key: str, purpose: bytes) -> bytes:
    if not secret_key:
        raise ValueError("the dashboard needs a non-empty SECRET_KEY to seal its sessions")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"lorafleet-dashboard/" + purpose)
    return hkdf.derive(secret_key.encode())


class SessionSealer:
    """Seals sessions into cookie values and opens them again; mints and checks CSRF tokens.

    Args:
        config: keys and lifetime.
        clock: seconds since the epoch (Fernet's timestamps); tests pass their own.
    """

    def __init__(self, config: SessionConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(config.secret_key, b"session")))
        self._csrf_key = _derive(config.secret_key, b"csrf")

    def new_session(self, *, token: str, namespace: str) -> DashboardSession:
        return DashboardSession(session_id=secrets.token_urlsafe(18), token=token, namespace=namespace)

    def seal(self, session: DashboardSession) -> str:
        payload = json.dumps({"sid": session.session_id, "tok": session.token, "ns": session.namespace})
        return self._fernet.encrypt_at_time(payload.encode(), int(self._clock())).decode("ascii")

    def open(self, cookie_value: str | None) -> DashboardSession | None:
        """Returns the session in `cookie_value`, or None if it is absent, forged or expired."""
        if not cookie_value:
            return None
        try:
            raw = self._fernet.decrypt_at_time(
                cookie_value.encode("ascii"), ttl=self.config.max_age_s, current_time=int(self._clock())
            )
            payload = json.loads(raw)
            return DashboardSession(session_id=payload["sid"], token=payload["tok"], namespace=payload["ns"])
        except (InvalidToken, UnicodeError, ValueError, KeyError, TypeError):
            return None

    def csrf_token(self, session: DashboardSession) -> str:
        digest = hmac.new(self._csrf_key, session.session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def csrf_ok(self, session: DashboardSession, candidate: str | None) -> bool:
        if not candidate:
            return False
        return hmac.compare_digest(self.csrf_token(session), candidate)

    def cookie_options(self, *, https: bool = False) -> dict[str, object]:
        """Keyword arguments for `Response.set_cookie` (HttpOnly, SameSite=Strict, path-scoped).

        Args:
            https: the request came over HTTPS (then the cookie is `Secure` too).
        """
        return {
            "max_age": self.config.max_age_s,
            "httponly": True,
            "samesite": "strict",
            "secure": self.config.secure_cookie or https,
            "path": "/dashboard",
        }
