"""UTC time as the database stores it (naive UTC) and as the HF wire format writes it."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (portable across SQLite and PostgreSQL columns)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def to_wire(moment: datetime) -> str:
    """`2023-10-26T12:41:53.263078Z`: the only form every huggingface_hub version parses."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
