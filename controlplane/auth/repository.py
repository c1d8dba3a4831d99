"""All SQL about namespaces and API tokens."""

from __future__ import annotations

from datetime import datetime

from lorafleet.controlplane.models import ApiToken, Namespace
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session


def get_namespace(session: Session, *, name: str) -> Namespace | None:
    return session.scalar(select(Namespace).where(Namespace.name == name))


def get_or_create_namespace(session: Session, *, name: str) -> Namespace:
    namespace = get_namespace(session, name=name)
    if namespace is None:
        namespace = Namespace(name=name)
        session.add(namespace)
        session.flush()
    return namespace


def add_token(
    session: Session, *, namespace: Namespace, token_hash: str, prefix: str, description: str
) -> ApiToken:
    token = ApiToken(namespace_id=namespace.id, token_hash=token_hash, prefix=prefix, description=description)
    session.add(token)
    session.flush()
    return token


def find_active_token(session: Session, *, token_hash: str) -> tuple[ApiToken, Namespace] | None:
    row = session.execute(
        select(ApiToken, Namespace)
        .join(Namespace, Namespace.id == ApiToken.namespace_id)
        .where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None))
    ).first()
    return None if row is None else (row[0], row[1])


def touch_token(session: Session, *, token_id: int, moment: datetime) -> None:
    """Best effort, on its own connection and transaction: bookkeeping must never fail (or
    lock-conflict) the request that carries the token."""
    try:
        with session.get_bind().connect() as connection:  # type: ignore[union-attr]
            connection.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=moment))
            connection.commit()
    except OperationalError:
        pass


def list_tokens(session: Session) -> list[tuple[ApiToken, str]]:
    rows = session.execute(
        select(ApiToken, Namespace.name)
        .join(Namespace, Namespace.id == ApiToken.namespace_id)
        .order_by(ApiToken.id)
    ).all()
    return [(row[0], row[1]) for row in rows]


def count_active_tokens(session: Session) -> int:
    return len(session.scalars(select(ApiToken.id).where(ApiToken.revoked_at.is_(None))).all())


def tokens_matching(session: Session, *, token_id: int | None, prefix: str | None) -> list[ApiToken]:
    query = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    if token_id is not None:
        query = query.where(ApiToken.id == token_id)
    if prefix is not None:
        query = query.where(ApiToken.prefix == prefix)
    return list(session.scalars(query))
