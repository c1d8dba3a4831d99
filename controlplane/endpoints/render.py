"""An endpoint row → the HF v2 `Endpoint` JSON every huggingface_hub version parses.

Required keys (contract §1.4): `name`, `type`, `healthRoute`, `model.repository`,
`model.framework`, `model.revision`, `model.task`, `status.state`, `status.createdAt`,
`status.updatedAt`; only `status.url` is optional. Secrets are never rendered.
"""

from __future__ import annotations

import copy
from typing import Any

from lorafleet.controlplane.clock import to_wire
from lorafleet.controlplane.models import Endpoint


def render_endpoint(endpoint: Endpoint) -> dict[str, Any]:
    spec = copy.deepcopy(endpoint.spec)
    model = spec["model"]  # rendered below
    model.setdefault("revision", None)
    model.setdefault("task", None)
    status: dict[str, Any] = {
        "createdAt": to_wire(endpoint.created_at),
        "createdBy": {"id": endpoint.created_by, "name": endpoint.created_by},
        "updatedAt": to_wire(endpoint.updated_at),
        "updatedBy": {"id": endpoint.updated_by, "name": endpoint.updated_by},
        "private": None,
        "state": endpoint.state,
        "message": endpoint.message,
        "readyReplica": endpoint.ready_replicas,
        "targetReplica": endpoint.target_replicas,
    }
    if endpoint.url:
        status["url"] = endpoint.url
    return {
        "name": endpoint.name,
        "type": spec.pop("type", "protected"),
        "accountId": spec.pop("accountId", None),
        "provider": spec.pop("provider"),
        "healthRoute": spec.pop("healthRoute", "/health"),
        "compute": spec.pop("compute"),
        "model": spec.pop("model"),
        **spec,
        "revision": endpoint.revision,
        "status": status,
    }
