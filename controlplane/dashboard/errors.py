"""Where an API error belongs on the create form.

The endpoint service names the offending JSON field in its errors (`field="compute.instanceType"`);
pydantic names it in `loc`. Both map onto the form's inputs here, so the API's own message is
shown next to the input it is about.
"""

from __future__ import annotations

from lorafleet.controlplane.errors import ConflictError, ControlPlaneError
from pydantic import ValidationError

FORM_LEVEL = "form"
"""Key of an error that belongs to no single input (shown above the form)."""

API_FIELDS = {
    "name": "name",
    "model.repository": "repository",
    "model.env": "env",
    "model.secrets": "secrets",
    "provider.vendor": "vendor",
    "provider.region": "region",
    "compute.instanceType": "instance_type",
    "compute.accelerator": "instance_type",
    "compute.instanceSize": "instance_size",
    "compute.scaling.minReplica": "min_replica",
    "compute.scaling.maxReplica": "max_replica",
}


def form_field(api_field: str) -> str:
    """The form input for a dotted API field path (longest known prefix wins)."""
    parts = api_field.split(".")
    while parts:
        found = API_FIELDS.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return FORM_LEVEL


def field_for(error: ControlPlaneError) -> str:
    """The form input a service error is about."""
    api_field = error.extra.get("field")
    if isinstance(api_field, str):
        return form_field(api_field)
    if isinstance(error, ConflictError):
        return "name"  # the only conflict a create can hit: the name is taken
    if type(error).__module__.startswith("lorafleet.controlplane.launchers"):
        return "instance_type"  # the launcher can never provide this hardware
    return FORM_LEVEL


def describe(error: dict) -> str:  # type: ignore[type-arg]
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def validation_errors(error: ValidationError) -> dict[str, str]:
    """One message per form input, from pydantic's errors (the first one for each input)."""
    result: dict[str, str] = {}
    for item in error.errors():
        location = ".".join(str(part) for part in item.get("loc", ()))
        result.setdefault(form_field(location) if location else FORM_LEVEL, describe(dict(item)))
    return result
