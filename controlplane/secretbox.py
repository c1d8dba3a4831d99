"""Encrypts endpoint secrets at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The key derives from `LORAFLEET_SECRET_KEY`. Without one, a random key is created once in
`<home>/secret.key` (mode 0600), which is fine for one host; several control-plane processes must
share the same `LORAFLEET_SECRET_KEY`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from lorafleet.controlplane.errors import ControlPlaneError


class SecretKeyError(ControlPlaneError):
    status_code = 500


class SecretBox:
    """Turns a `{name: value}` dict into an opaque string and back."""

    def __init__(self, key_material: str) -> None:
        digest = hashlib.sha256(key_material.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    @classmethod
    def from_key_file(cls, path: Path) -> SecretBox:
        """Reads the key in `path`, creating it (0600) on first use."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_text().strip())
        with os.fdopen(fd, "w") as handle:
            key = secrets.token_urlsafe(32)
            handle.write(key)
        return cls(key)

    @classmethod
    def from_settings(cls, settings: Any) -> SecretBox:
        """From `LORAFLEET_SECRET_KEY`, else the key file under `LORAFLEET_HOME` (created once)."""
        if settings.secret_key:
            return cls(settings.secret_key.get_secret_value())
        return cls.from_key_file(settings.secret_key_file)

    def seal(self, values: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(values).encode()).decode()

    def open(self, sealed: str) -> dict[str, str]:
        try:
            return json.loads(self._fernet.decrypt(sealed.encode()))
        except InvalidToken as e:
            raise SecretKeyError(
                "cannot decrypt endpoint secrets: LORAFLEET_SECRET_KEY differs from the key they "
                "were stored with"
            ) from e
