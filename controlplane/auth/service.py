"""Creating, checking, listing and revoking API tokens. Services never commit.

Tokens are `lf_` + 43 URL-safe random characters (256 bits), so an unsalted SHA-256 is a safe
at-rest form: there is nothing to brute-force. The dashboard signs in with the same
`authenticate()` the REST routes use.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from lorafleet.controlplane.auth import repository
from lorafleet.controlplane.clock import utcnow
from lorafleet.controlplane.errors import BadRequestError, NotFoundError, UnauthorizedError
from sqlalchemy.orm import Session

TOKEN_PREFIX = "lf_"
NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the namespace a valid token belongs to."""

    namespace: str
    namespace_id: int
    token_id: int


@dataclass(frozen=True)
class TokenInfo:
    id: int
    namespace: str
    prefix: str
    description: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_namespace_name(name: str) -> str:
    if not NAMESPACE_PATTERN.match(name):
        raise BadRequestError(
            f"invalid namespace {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def create_token(session: Session, *, namespace: str, description: str = "") -> tuple[TokenInfo, str]:
    """Creates a token for `namespace` (creating the namespace too). Returns (info, the token)."""
    ns = repository.get_or_create_namespace(session, name=validate_namespace_name(namespace))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = repository.add_token(
        session, namespace=ns, token_hash=hash_token(token), prefix=token[:10], description=description
    )
    return _info(row, ns.name), token


def authenticate(session: Session, authorization: str | None) -> Principal:
    """Checks an `Authorization: Bearer <token>` header value (or a bare token).

    Raises:
        UnauthorizedError: missing, malformed, unknown or revoked token.
    """
    if not authorization:
        raise UnauthorizedError(
            "missing bearer token: send `Authorization: Bearer <token>` "
            "(create one with `lorafleet controlplane create-token`)"
        )
    scheme, _, value = authorization.strip().partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else authorization.strip()
    if not token:
        raise UnauthorizedError("malformed Authorization header: expected `Bearer <token>`")
    found = repository.find_active_token(session, token_hash=hash_token(token))
    if found is None:
        raise UnauthorizedError("invalid or revoked token")
    row, ns = found
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        repository.touch_token(session, token_id=row.id, moment=now)
    return Principal(namespace=ns.name, namespace_id=ns.id, token_id=row.id)


def list_tokens(session: Session) -> list[TokenInfo]:
    return [_info(row, ns) for row, ns in repository.list_tokens(session)]


def revoke_token(session: Session, *, token_id: int | None = None, prefix: str | None = None) -> int:
    """Revokes the token with this id or prefix; returns how many were revoked."""
    if token_id is None and not prefix:
        raise BadRequestError("give a token id or prefix to revoke")
    rows = repository.tokens_matching(session, token_id=token_id, prefix=prefix)
    if not rows:
        raise NotFoundError("no active token matches")
    now = utcnow()
    for row in rows:
        row.revoked_at = now
    return len(rows)


def has_any_token(session: Session) -> bool:
    return repository.count_active_tokens(session) > 0


def _info(row, namespace: str) -> TokenInfo:  # type: ignore[no-untyped-def]
    return TokenInfo(
        id=row.id,
        namespace=namespace,
        prefix=row.prefix,
        description=row.description,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
