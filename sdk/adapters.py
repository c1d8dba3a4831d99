"""`EndpointAdapter`: one adapter of an endpoint's live set, as `GET .../adapters` reports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import LorafleetError


@dataclass(frozen=True)
class EndpointAdapter:
    """One adapter an endpoint serves (or is loading), and on how many replicas it is ready.

    Attributes:
        name: the `adapter_id` requests use.
        source: a Hub repo id, or a folder under the control plane's `LOCAL_ROOTS`.
        revision: the Hub revision, None for the default branch (and for folders).
        digest: the content hash of the adapter's files (None until known for a Hub source).
        ready_replicas / target_replicas: replicas serving this version / replicas that should.
        state: `pending` (loading, or no replica runs), `ready` (every replica serves this version)
            or `failed` (a replica refused it: `message` says why).

    Example:
        ```python
        >>> [(a.name, a.state, a.ready_replicas) for a in endpoint.adapters]
        [('customer_support', 'ready', 2)]
        ```
    """

    name: str
    source: str
    revision: str | None
    digest: str | None
    ready_replicas: int
    target_replicas: int
    state: str
    message: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Any) -> EndpointAdapter:
        try:
            return cls(
                raw["name"],
                raw["source"],
                raw.get("revision"),
                raw.get("digest"),
                int(raw["readyReplicas"]),
                int(raw["targetReplicas"]),
                raw["state"],
                raw.get("message") or "",
                raw,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise LorafleetError(f"Unexpected adapter description from the server: {error!r}") from error

    @classmethod
    def list_from_raw(cls, raw: Any) -> list[EndpointAdapter]:
        try:
            return [cls.from_raw(item) for item in raw["items"]]
        except (KeyError, TypeError) as error:
            raise LorafleetError(f"Unexpected adapter list from the server: {error!r}") from error
