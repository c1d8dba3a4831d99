"""The server's configuration: one frozen dataclass, built by the CLI from flags and env vars.

The engine's options are an `EngineArgs` inside it (listed once, in `lorafleet.runtime.args`);
the fields here are the HTTP server's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lorafleet.runtime.args import AdapterSource, EngineArgs


class ConfigError(ValueError):
    """A bad flag or environment value; the message names the flag (and its env var)."""


DEFAULT_PAYLOAD_LIMIT = 2_000_000  # bytes, as TGI's --payload-limit
DEFAULT_LOG_MAX_BYTES = 10_000_000


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP server's options. `api_key` None means an open replica (a developer's laptop)."""

    engine: EngineArgs
    max_concurrent_requests: int = 128
    hostname: str = "0.0.0.0"
    port: int = 3000
    log_level: str = "info"
    api_key: str | None = field(default=None, repr=False)  # never printed, logged or served
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    log_file: str | None = None  # None: stderr
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES  # the log file and its one backup each stay under it


def parse_adapter_list(value: str, *, flag: str = "--lora-adapters") -> tuple[AdapterSource, ...]:
    """Parses TGI's `LORA_ADAPTERS`: a comma list of `id`, `id@rev`, `name=path` or `name=id@rev`.

    Example:
        >>> parse_adapter_list("predibase/magicoder,support=/data/support")
        (AdapterSource(adapter_id='predibase/magicoder', source='predibase/magicoder', revision=None),
         AdapterSource(adapter_id='support', source='/data/support', revision=None))
    """
    sources: list[AdapterSource] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if sep:
            name, target = name.strip(), target.strip()
            if not name or not target:
                raise ConfigError(f"{flag}: entry {item!r} must be `name=path` with both parts set")
        else:
            name, target = "", item
        revision = None
        if "@" in target and not os.path.exists(target):
            target, _, revision = target.rpartition("@")
            if not target or not revision:
                raise ConfigError(f"{flag}: entry {item!r} has an empty id or revision around '@'")
        adapter_id = name or target
        if any(s.adapter_id == adapter_id for s in sources):
            raise ConfigError(f"{flag}: adapter id {adapter_id!r} is given twice")
        sources.append(AdapterSource(adapter_id, target, revision))
    return tuple(sources)
