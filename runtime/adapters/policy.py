"""Which adapter ids a request may name: the replica's registered names, or (if allowed) Hub repos.

A request's `adapter_id` (TGI `parameters.adapter_id`, OpenAI `model`) is client input on a
replica that serves one tenant's endpoint, possibly to anyone holding the endpoint's URL. Read
as a path it would let a client load another tenant's adapter from the host and learn, from
the error text, which paths exist. So a request may only name:

- an id the replica registered (`LORA_ADAPTERS`, `Engine.register_adapter`), whatever its source;
- with `allow_hub_adapters`, a Hub repo id `org/name`, which is only ever downloaded (or read
  from the Hub cache), never looked up on the local filesystem.

Everything else is refused before any file, network or cache access, with one message that
depends only on a bounded prefix of the id, so it says nothing about the host.
"""

from __future__ import annotations

import re

from lorafleet.runtime.errors import AdapterLoadError

MAX_ADAPTER_ID_LENGTH = 256  # Hub ids are at most 96 characters per part
SHOWN_PREFIX = 64  # characters of a refused id echoed in the error (and logs)
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+", re.ASCII)


def shown(adapter_id: str) -> str:
    """The id as errors and logs may print it: a bounded prefix, quoted."""
    if len(adapter_id) <= SHOWN_PREFIX:
        return repr(adapter_id)
    return f"{adapter_id[:SHOWN_PREFIX]!r}... ({len(adapter_id)} characters)"


def is_hub_repo_id(adapter_id: str) -> bool:
    """`org/name` with Hub characters only: no path (no leading `/`, `.`, `~`, no `..`, one `/`)."""
    return (
        len(adapter_id) <= MAX_ADAPTER_ID_LENGTH
        and HUB_REPO_ID.fullmatch(adapter_id) is not None
        and ".." not in adapter_id
        and not adapter_id.partition("/")[2].startswith(".")
    )


def check_request_adapter(adapter_id: str, *, registered: bool, allow_hub: bool) -> None:
    """Raises `AdapterLoadError` unless a request may name `adapter_id` (module docstring)."""
    if len(adapter_id) <= MAX_ADAPTER_ID_LENGTH and (
        registered or (allow_hub and is_hub_repo_id(adapter_id))
    ):
        return
    accepted = "one of this replica's registered adapters"
    if allow_hub:
        accepted += " or a Hub repo id `org/name`"
    raise AdapterLoadError(
        f"adapter {shown(adapter_id)} is not served here: `adapter_id` must name {accepted}"
    )
