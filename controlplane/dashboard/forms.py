"""The create form: what the browser posts, turned into the same JSON body the REST API takes.

Only the *syntax* of the form is checked here (a number where a number goes, `KEY=VALUE` lines);
everything about what the values mean (names, instance types, replica bounds, adapters) is the
endpoint service's job, so the dashboard and the REST API give identical messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

FIELDS = (
    "name",
    "repository",
    "adapters",
    "vendor",
    "region",
    "instance_type",
    "instance_size",
    "min_replica",
    "max_replica",
    "env",
    "secrets",
)
"""Form field names, in page order; each `<input>`/`<textarea>`/`<select>` is named so."""


class FormError(Exception):
    """A field the form itself cannot read; `errors` maps field name to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class EndpointForm:
    """What the user typed, kept verbatim so a refused form is shown again as it was."""

    name: str = ""
    repository: str = ""
    adapters: str = ""
    vendor: str = ""
    region: str = ""
    instance_type: str = ""
    instance_size: str = "x1"
    min_replica: str = "1"
    max_replica: str = "1"
    env: str = ""
    secrets: str = ""

    @classmethod
    def from_form(cls, data: Mapping[str, Any]) -> EndpointForm:
        values = {name: str(data.get(name, "") or "") for name in FIELDS}
        return cls(**values)

    def values(self) -> dict[str, str]:
        return asdict(self)


def parse_key_values(text: str, *, label: str) -> dict[str, str]:
    """Parses `KEY=VALUE` lines (blank lines and `#` comments skipped; values may contain `=`).

    Raises:
        ValueError: with a message naming the first bad line.
    """
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{label}: line {number} must look like KEY=VALUE, got {line!r}")
        if key in result:
            raise ValueError(f"{label}: {key} is set twice (lines with the same key)")
        result[key] = value.strip()
    return result


def parse_adapters(text: str) -> list[str]:
    """Turns one-adapter-per-line text into `LORA_ADAPTERS` items (`id=path` or a plain id).

    Raises:
        ValueError: when a line holds a comma (it would silently become two adapters).
    """
    items: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "," in line:
            raise ValueError(f"Adapters: line {number} holds a comma; put one adapter per line")
        name, sep, path = line.partition("=")
        items.append(f"{name.strip()}={path.strip()}" if sep else line)
    return items


def _replica_count(text: str, label: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{label} must be a whole number, got {text.strip()!r}") from None


def build_create_payload(form: EndpointForm, *, accelerator: str) -> dict[str, Any]:
    """Returns the HF v2 create body for `form`, as `huggingface_hub` would send it.

    Args:
        form: what the user typed.
        accelerator: `gpu` or `cpu`, from the catalog entry the user picked (the service still
            checks the whole compute triple against the catalog).

    Raises:
        FormError: naming each field the form could not read.
    """
    errors: dict[str, str] = {}
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}
    adapters: list[str] = []
    scaling: dict[str, int] = {}
    try:
        env = parse_key_values(form.env, label="Environment variables")
    except ValueError as e:
        errors["env"] = str(e)
    try:
        secrets = parse_key_values(form.secrets, label="Secrets")
    except ValueError as e:
        errors["secrets"] = str(e)
    try:
        adapters = parse_adapters(form.adapters)
    except ValueError as e:
        errors["adapters"] = str(e)
    for key, label, text in (("min_replica", "Min replicas", form.min_replica),
                             ("max_replica", "Max replicas", form.max_replica)):
        try:
            scaling[key] = _replica_count(text, label)
        except ValueError as e:
            errors[key] = str(e)
    if adapters and "LORA_ADAPTERS" in env:
        errors["adapters"] = (
            "LORA_ADAPTERS is also set under Environment variables; use one of the two places"
        )
    if errors:
        raise FormError(errors)
    if adapters:
        env["LORA_ADAPTERS"] = ",".join(adapters)
    model: dict[str, Any] = {
        "repository": form.repository.strip(),
        "framework": "pytorch",
        "revision": None,
        "task": "text-generation",
        "image": {"huggingface": {}},
    }
    if env:
        model["env"] = env
    if secrets:
        model["secrets"] = secrets
    return {
        "name": form.name.strip(),
        "type": "protected",
        "provider": {"vendor": form.vendor.strip(), "region": form.region.strip()},
        "compute": {
            "accelerator": accelerator,
            "instanceType": form.instance_type.strip(),
            "instanceSize": form.instance_size.strip() or "x1",
            "scaling": {"minReplica": scaling["min_replica"], "maxReplica": scaling["max_replica"]},
        },
        "model": model,
    }
