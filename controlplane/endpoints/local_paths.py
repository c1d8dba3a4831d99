"""Local paths in an endpoint spec: only under the folders the operator lists in `LOCAL_ROOTS`.

A spec names a base model (`model.repository`, `MODEL_ID`, `--model-id`) and adapters
(`LORA_ADAPTERS`, `--lora-adapters`: `id`, `id@rev`, `name=source`). A source is either a Hub repo
id (`org/name`, what the replica downloads) or a local folder. A local folder must be an absolute
path (`~` too, for `model.repository`) whose real location, symlinks and `..` resolved, lies under
one of `LOCAL_ROOTS`; anything else is refused with one message whether the path exists or not,
so the answer says nothing about the host's files. `LOCAL_ROOTS` is empty by default: specs then
name Hub repos only.

The launcher gets the approved folders (`LocalFolder`) to make visible to the replica, and
nothing else of the host's files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorafleet.controlplane.errors import BadRequestError
from lorafleet.controlplane.launchers.base import LocalFolder

# Hub repo ids: `name` or `org/name`, letters, digits, `-`, `_`, `.` (no `..`, at most 96 each).
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
REPOSITORY_PLACEHOLDER = "/repository"  # the seed's MODEL_ID: "the endpoint's model.repository"


def is_hub_repo_id(source: str) -> bool:
    return bool(HUB_REPO_ID.match(source)) and ".." not in source


class LocalRoots:
    """The operator's folders; `check` approves or refuses one source of a spec."""

    def __init__(self, roots: tuple[Path, ...]) -> None:
        self.roots = roots

    def check(self, source: str, field: str, *, allow_home: bool = False) -> LocalFolder | None:
        """None for a Hub repo id; the approved folder for a local path; a 400 otherwise.

        Args:
            source: the value as the tenant wrote it.
            field: where it is in the request, for the error (`model.env.LORA_ADAPTERS`).
            allow_home: accept `~` (expanded for the control plane's user): `model.repository`
                always did; inside the replica `~` means another folder, so env values may not.
        """
        if is_hub_repo_id(source):
            return None
        expanded = os.path.expanduser(source) if allow_home and source.startswith("~") else source
        if os.path.isabs(expanded):
            path = os.path.normpath(expanded)
            real = os.path.realpath(path)
            if any(_inside(Path(real), root) for root in self.roots):
                return LocalFolder(path, real)
        allowed = ", ".join(str(r) for r in self.roots) or "none: the operator set no LORAFLEET_LOCAL_ROOTS"
        raise BadRequestError(
            f"{field}: {source!r} is neither a Hub repo id (org/name) nor a local folder this control "
            f"plane serves from (absolute paths under LORAFLEET_LOCAL_ROOTS: {allowed})",
            field=field,
        )

    def spec_sources(self, spec: Mapping[str, Any], flag_env: Mapping[str, str]) -> list[LocalFolder]:
        """Checks every model and adapter source of a spec; returns the approved local folders.

        Args:
            spec: the normalised spec (`model.repository`, `model.env`).
            flag_env: the settings `model.args` gives, as env names (they win over `model.env`).
        """
        model = spec["model"]
        env = {**(model.get("env") or {}), **flag_env}
        found = []
        repository = self.check(model["repository"], "model.repository", allow_home=True)
        model_id = env.get("MODEL_ID") or REPOSITORY_PLACEHOLDER
        where = "model.args" if "MODEL_ID" in flag_env else "model.env.MODEL_ID"
        if model_id != REPOSITORY_PLACEHOLDER:
            repository = self.check(model_id, where)
        if repository is not None:
            found.append(repository)
        where = "model.args" if "LORA_ADAPTERS" in flag_env else "model.env.LORA_ADAPTERS"
        for target in _adapter_targets(env.get("LORA_ADAPTERS", "")):
            source = self.check(target, where)
            if source is not None:
                found.append(source)
        return found


def lora_adapter_entries(value: str) -> list[tuple[str | None, str]]:
    """The items of a `LORA_ADAPTERS` value as the runtime reads it: (name, target) per comma item;
    name is None for a bare `id`, `id@rev` or path (`name=target` names its target)."""
    entries: list[tuple[str | None, str]] = []
    for raw in value.split(","):
        item = raw.strip()
        if item:
            name, sep, target = item.partition("=")
            entries.append((name.strip(), target.strip()) if sep else (None, item))
    return entries


def split_hub_revision(target: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`) for a Hub id; anything else unchanged, with no revision."""
    base, at, revision = target.rpartition("@")
    if at and base and revision and is_hub_repo_id(base):
        return base, revision
    return target, None


def _adapter_targets(value: str) -> list[str]:
    """The sources of a `LORA_ADAPTERS` list, `@revision` dropped from Hub ids. A path with `@`
    yields both readings: the runtime splits `path@rev` when the whole path does not exist."""
    targets = []
    for _, target in lora_adapter_entries(value):
        source, revision = split_hub_revision(target)
        base = target.rpartition("@")[0]
        if revision is not None or not base:
            targets.append(source)
        else:
            targets.extend([target, base])
    return targets


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
