"""An endpoint's live adapter set: `GET/PUT/DELETE /v2/endpoint/{ns}/{name}/adapters[/{adapter}]`.

The set lives in `endpoint_adapters`, not in the spec, so changing it never makes replicas stale
(the planner compares only the spec's launch fields): the reconciler's adapter sync
(`controlplane/adapter_sync.py`) loads and unloads adapters on running replicas through their admin
API, and new replicas start with the set rendered into their `LORA_ADAPTERS`.

At create, the seed payload's `LORA_ADAPTERS` (`model.env`, or `--lora-adapters` in `model.args`,
which wins as in the runtime) become the first items; an update that changes that value replaces
the set with the new list, so code that only knows the HF payload keeps working.

Every field is tenant input: names as the runtime's `ADAPTER_NAME`, sources a Hub repo id or a
folder under `LOCAL_ROOTS` (`local_paths.py`), revisions Hub-like and for Hub sources only, all
bounded; at most `QUOTA_ADAPTERS` adapters per endpoint. A source folder is hashed here
(`lorafleet.adapter_digest`, the runtime's digest): a PUT whose files changed is a new version.
"""

from __future__ import annotations

import builtins  # the class defines list(); annotations below mean the builtin
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.adapter_digest import adapter_digest
from lorafleet.controlplane.clock import to_wire, utcnow
from lorafleet.controlplane.endpoints import adapter_rows
from lorafleet.controlplane.endpoints.env_policy import check_args
from lorafleet.controlplane.endpoints.local_paths import (
    LocalRoots,
    lora_adapter_entries,
    split_hub_revision,
)
from lorafleet.controlplane.endpoints.plan import AdapterItem
from lorafleet.controlplane.endpoints.quota import QuotaExceededError
from lorafleet.controlplane.errors import BadRequestError, ConflictError, NotFoundError
from lorafleet.controlplane.models import Endpoint, EndpointAdapter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")  # the runtime's admin API's
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")  # branch, tag or commit
MAX_SOURCE_CHARS = 1024
_NOT_IN_LIST = re.compile(r"[,\s\x00-\x1f\x7f]")  # would break the LORA_ADAPTERS list a replica gets


class AdapterPut(BaseModel):
    """The body of `PUT .../adapters/{adapter}`."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    revision: str | None = Field(default=None, min_length=1, max_length=256)


@dataclass(frozen=True)
class SeedItem:
    name: str
    source: str
    revision: str | None = None


def adapter_items(rows: Sequence[EndpointAdapter], roots: LocalRoots) -> tuple[AdapterItem, ...]:
    """The set as the reconciler acts on it; each local source checked against `LOCAL_ROOTS` again
    (the operator may have narrowed them) and resolved to the real folder a replica is shown."""
    items = []
    for row in rows:
        load_path: str | None = row.source
        refused = ""
        try:
            folder = roots.check(row.source, "source")
            load_path = folder.real if folder is not None else row.source
        except BadRequestError as e:
            load_path, refused = None, e.message
        items.append(
            AdapterItem(
                row.id,
                row.version,
                row.name,
                row.source,
                row.revision,
                row.digest,
                load_path,
                refused,
                row.state,
                row.message,
                row.ready_replicas,
                row.target_replicas,
            )
        )
    return tuple(items)


def lora_adapters_value(items: Sequence[AdapterItem]) -> str:
    """The set as the runtime's `LORA_ADAPTERS` (`name=path` or `name=repo@revision`)."""
    return ",".join(
        f"{i.name}={i.load_path}" + (f"@{i.revision}" if i.revision else "")
        for i in items
        if i.load_path is not None
    )


def render_adapter(row: EndpointAdapter) -> dict[str, Any]:
    return {
        "name": row.name,
        "source": row.source,
        "revision": row.revision,
        "digest": row.digest,
        "readyReplicas": row.ready_replicas,
        "targetReplicas": row.target_replicas,
        "state": row.state,
        "message": row.message,
        "updatedAt": to_wire(row.updated_at),
    }


def seed_items(spec: Mapping[str, Any]) -> list[SeedItem]:
    """The adapters a spec's `LORA_ADAPTERS` names (`id`, `id@rev`, `name=source[@rev]`), as the
    runtime reads it; `@rev` splits off Hub ids only (a folder has no revisions)."""
    model = spec["model"]
    value = check_args(model.get("args") or []).get("LORA_ADAPTERS")
    if value is None:
        value = (model.get("env") or {}).get("LORA_ADAPTERS") or ""
    items: dict[str, SeedItem] = {}
    for name, target in lora_adapter_entries(value):
        source, revision = split_hub_revision(target)
        key = name if name is not None else source
        items.setdefault(key, SeedItem(key, source, revision))
    return list(items.values())


def check_name(name: str, field: str = "adapter") -> None:
    if not ADAPTER_NAME.match(name) or ".." in name:
        hint = " (give a folder a name: `name=/path/to/folder`)" if name.startswith("/") else ""
        raise BadRequestError(
            f"{field}: adapter name {name[:200]!r}: 1-128 letters, digits, '.', '_', '/', '-', starting "
            f"with a letter or digit, without '..'{hint}",
            field=field,
        )


class AdapterSet:
    """Reads and changes endpoints' adapter sets (never commits: the caller's session scope does).

    Args:
        roots: the operator's `LOCAL_ROOTS`.
        limit: adapters per endpoint (`QUOTA_ADAPTERS`).
    """

    def __init__(self, roots: LocalRoots, limit: int) -> None:
        self.roots = roots
        self.limit = limit

    def list(self, session: Session, endpoint: Endpoint) -> list[EndpointAdapter]:
        return list(adapter_rows.adapters_of(session, endpoint.id))

    def put(
        self, session: Session, endpoint: Endpoint, name: str, body: AdapterPut, *, strict: bool = True
    ) -> tuple[EndpointAdapter, bool]:
        """Adds or replaces `name`; returns the row and whether what it serves changed.

        Args:
            strict: a local source must hold `adapter_config.json` (a seed keeps the HF payload's
                behaviour instead: accepted as written, the replica reports what is wrong).
        """
        if strict:  # (`seed_plan` checked a seed's names)
            check_name(name)
        source, digest = self._source(body.source, body.revision, strict=strict)
        row = adapter_rows.get_adapter(session, endpoint.id, name)
        if (
            row is not None
            and (row.source, row.revision) == (source, body.revision)
            and (digest is None or row.digest == digest)
        ):
            return row, False
        if row is None:
            if len(adapter_rows.adapters_of(session, endpoint.id)) >= self.limit:
                raise QuotaExceededError(
                    f"endpoint {endpoint.name!r} already has {self.limit} adapters, the most one endpoint "
                    "may have (QUOTA_ADAPTERS): remove one first",
                    limit="adapters",
                    value=self.limit,
                )
            row = EndpointAdapter(endpoint_id=endpoint.id, name=name)
            session.add(row)
        row.source, row.revision, row.digest = source, body.revision, digest
        row.state, row.message, row.ready_replicas, row.updated_at = "pending", "", 0, utcnow()
        self._flush(session, name)
        return row, True

    def delete(self, session: Session, endpoint: Endpoint, name: str) -> None:
        row = adapter_rows.get_adapter(session, endpoint.id, name)
        if row is None:
            raise NotFoundError(f"Adapter {name[:200]!r} not found in endpoint {endpoint.name!r}")
        session.delete(row)
        self._flush(session, name)

    def seed_plan(self, spec: Mapping[str, Any]) -> builtins.list[tuple[str, AdapterPut]]:
        """The set a spec's `LORA_ADAPTERS` makes, checked whole (names, bounds, the quota) before
        anything is written: a create or update it refuses leaves no trace."""
        plan = []
        for item in seed_items(spec):
            field = "model.env.LORA_ADAPTERS"
            if item.name != item.source:  # a bare folder is its own name, as in the runtime
                check_name(item.name, field)
            try:
                plan.append((item.name, AdapterPut(source=item.source, revision=item.revision)))
            except ValidationError as e:  # a source or revision past the API's bounds
                raise BadRequestError(
                    f"{field}: adapter {item.name[:200]!r}: {e.errors()[0]['msg']}", field=field
                ) from e
        if len(plan) > self.limit:
            raise QuotaExceededError(
                f"{len(plan)} adapters, more than one endpoint may have (QUOTA_ADAPTERS {self.limit})",
                limit="adapters", value=self.limit,
            )
        return plan

    def seed(self, session: Session, endpoint: Endpoint, plan: Sequence[tuple[str, AdapterPut]]) -> None:
        """Makes the set `plan` (`seed_plan`), at create and when an update changes `LORA_ADAPTERS`."""
        wanted = {name for name, _ in plan}
        for row in adapter_rows.adapters_of(session, endpoint.id):
            if row.name not in wanted:
                session.delete(row)
        for name, body in plan:
            self.put(session, endpoint, name, body, strict=False)

    def _source(self, source: str, revision: str | None, *, strict: bool) -> tuple[str, str | None]:
        """The source as stored and, for a local folder, its digest; a 400 for anything else."""
        if _NOT_IN_LIST.search(source):
            raise BadRequestError("source: no commas, spaces or control characters", field="source")
        if revision is not None and (not REVISION.match(revision) or ".." in revision):
            raise BadRequestError(
                "revision: a branch, tag or commit (letters, digits, '.', '_', '/', '-')", field="revision"
            )
        folder = self.roots.check(source, "source")
        if folder is None:
            return source, None
        if revision is not None:
            raise BadRequestError(
                "revision: only a Hub source has revisions, not a local folder", field="revision"
            )
        real = Path(folder.real)
        if strict and not (real / "adapter_config.json").is_file():
            raise BadRequestError(
                f"source: {source!r} holds no adapter_config.json (not a PEFT adapter)", field="source"
            )
        return folder.path, adapter_digest(real) if real.is_dir() else None

    @staticmethod
    def _flush(session: Session, name: str) -> None:
        try:
            with session.begin_nested():
                session.flush()
        except (IntegrityError, StaleDataError) as e:  # a concurrent PUT or DELETE of the same name
            raise ConflictError(f"Adapter {name!r} was changed concurrently: retry") from e
