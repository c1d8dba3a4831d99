"""The endpoint service: every operation the REST routes and the dashboard perform.

Plain methods taking a session and the caller's `Principal`; they validate, change rows through
the repository, append events, and never commit (the caller's session scope does). After a
change they flag the session (`session.info["wake_reconciler"]`); the session dependency wakes
the reconciler after the commit, so it acts at once instead of at its next tick.
"""

from __future__ import annotations

import builtins  # the class defines list(); annotations below mean the builtin
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lorafleet.controlplane.auth.service import Principal
from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.clock import to_wire, utcnow
from lorafleet.controlplane.endpoints import repository
from lorafleet.controlplane.endpoints.adapters import AdapterPut, AdapterSet, render_adapter, seed_items
from lorafleet.controlplane.endpoints.env_policy import check_env
from lorafleet.controlplane.endpoints.local_paths import LocalRoots
from lorafleet.controlplane.endpoints.quota import Claim, Quota, check_claims
from lorafleet.controlplane.endpoints.render import render_endpoint
from lorafleet.controlplane.endpoints.schemas import EndpointCreate, EndpointUpdate
from lorafleet.controlplane.endpoints.spec import build_spec, check_spec, merge_update
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec, launch_digest_fields
from lorafleet.controlplane.errors import BadRequestError, ConflictError, NotFoundError
from lorafleet.controlplane.models import Endpoint, EndpointAdapter
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.usage import repository as usage_repository
from lorafleet.controlplane.usage.report import usage_json
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

WAKE_FLAG = "wake_reconciler"


def _wake(session: Session) -> None:
    session.info[WAKE_FLAG] = True


@dataclass(frozen=True)
class ReplicaLogs:
    replica: str
    state: str
    lines: list[str]


class EndpointService:
    """Create, list, get, update, pause, resume, scale to zero, delete, logs and events.

    Args:
        hardware: the catalog and launcher (instance types, capacity).
        secret_box: seals endpoint secrets and replica keys.
        roots: the operator's `LOCAL_ROOTS` (local model and adapter folders specs may name).
        quota: the per-namespace limits checked at create, update and resume.
    """

    def __init__(self, hardware: Hardware, secret_box: SecretBox, *, roots: LocalRoots, quota: Quota) -> None:
        self.hardware = hardware
        self.secret_box = secret_box
        self.roots = roots
        self.quota = quota
        self.adapters = AdapterSet(roots, quota.adapters)

    # --- reads --------------------------------------------------------------------------

    def get(self, session: Session, principal: Principal, name: str) -> Endpoint:
        endpoint = repository.get_endpoint(session, namespace_id=principal.namespace_id, name=name)
        if endpoint is None:
            raise NotFoundError(f"Endpoint {name!r} not found in namespace {principal.namespace!r}")
        return endpoint

    def list(self, session: Session, principal: Principal) -> list[Endpoint]:
        return list(repository.list_endpoints(session, namespace_id=principal.namespace_id))

    def render(self, endpoint: Endpoint) -> dict[str, Any]:
        return render_endpoint(endpoint)

    # --- writes -------------------------------------------------------------------------

    def create(self, session: Session, principal: Principal, body: EndpointCreate) -> Endpoint:
        spec = build_spec(body)
        self._check(spec, body.model.secrets)
        if repository.get_endpoint(session, namespace_id=principal.namespace_id, name=body.name):
            raise ConflictError(f"Endpoint {body.name!r} already exists in namespace {principal.namespace!r}")
        self._check_quota(session, principal, spec, None)
        adapters = self.adapters.seed_plan(spec)
        now = utcnow()
        endpoint = Endpoint(
            namespace_id=principal.namespace_id,
            name=body.name,
            spec=spec,
            secrets_encrypted=self.secret_box.seal(body.model.secrets) if body.model.secrets else None,
            desired_state="running",
            state="pending",
            message="Endpoint waiting to be scheduled",
            created_by=principal.namespace,
            updated_by=principal.namespace,
            created_at=now,
            updated_at=now,
            last_active_at=now,
        )
        try:
            with session.begin_nested():
                repository.add_endpoint(session, endpoint)
        except IntegrityError as e:  # a concurrent create won the race for the name
            raise ConflictError(
                f"Endpoint {body.name!r} already exists in namespace {principal.namespace!r}"
            ) from e
        repository.add_event(
            session,
            endpoint_id=endpoint.id,
            kind="created",
            message=f"created on {EndpointSpec.from_stored(spec).instance_label}",
        )
        self.adapters.seed(session, endpoint, adapters)
        _wake(session)
        return endpoint

    def update(
        self,
        session: Session,
        principal: Principal,
        name: str,
        body: EndpointUpdate,
        expected_revision: int | None = None,
    ) -> Endpoint:
        """Deep-merges `body` into the spec. `expected_revision` (HTTP `If-Match`) must match."""
        endpoint = self.get(session, principal, name)
        if expected_revision is not None and expected_revision != endpoint.revision:
            raise ConflictError(
                f"Endpoint {name!r} is at revision {endpoint.revision}, not "
                f"{expected_revision}: fetch it and retry",
                revision=endpoint.revision,
            )
        new_spec = merge_update(endpoint.spec, body)
        self._check(new_spec, body.model.secrets if body.model is not None else None)
        if endpoint.desired_state == "running":
            self._check_quota(session, principal, new_spec, endpoint)
        relaunch = launch_digest_fields(new_spec) != launch_digest_fields(endpoint.spec)
        # A new `LORA_ADAPTERS` (the HF way to change adapters) replaces the live set.
        changed_seed = seed_items(new_spec) != seed_items(endpoint.spec)
        reseed = self.adapters.seed_plan(new_spec) if changed_seed else None
        if body.model is not None and body.model.secrets is not None:
            endpoint.secrets_encrypted = (
                self.secret_box.seal(body.model.secrets) if body.model.secrets else None
            )
            relaunch = True
        endpoint.spec = new_spec
        endpoint.failure_count = 0
        if endpoint.desired_state == "running" and relaunch:
            endpoint.state = "updating" if endpoint.state == "running" else "pending"
            endpoint.message = "Endpoint waiting for the update"
        elif endpoint.state in ("failed", "updateFailed"):
            endpoint.state, endpoint.message = "pending", "Endpoint waiting to be scheduled"
        self._touch(endpoint, principal)
        self._flush(session, endpoint)
        if reseed is not None:
            self.adapters.seed(session, endpoint, reseed)
        repository.add_event(
            session,
            endpoint_id=endpoint.id,
            kind="updated",
            message="spec updated" + (" (new replicas)" if relaunch else ""),
        )
        _wake(session)
        return endpoint

    def pause(self, session: Session, principal: Principal, name: str) -> Endpoint:
        endpoint = self.get(session, principal, name)
        endpoint.desired_state, endpoint.state = "paused", "paused"
        endpoint.message, endpoint.url, endpoint.target_replicas = "Endpoint paused", None, 0
        return self._commit_action(session, principal, endpoint, "paused")

    def resume(self, session: Session, principal: Principal, name: str) -> Endpoint:
        endpoint = self.get(session, principal, name)
        if endpoint.desired_state == "running" and endpoint.state in ("running", "updating"):
            raise BadRequestError(f"Endpoint {name!r} is already running")
        self._check_quota(session, principal, endpoint.spec, endpoint)
        endpoint.desired_state, endpoint.state, endpoint.url = "running", "pending", None
        endpoint.message, endpoint.failure_count = "Endpoint waiting to be scheduled", 0
        return self._commit_action(session, principal, endpoint, "resumed")

    def scale_to_zero(self, session: Session, principal: Principal, name: str) -> Endpoint:
        endpoint = self.get(session, principal, name)
        endpoint.desired_state, endpoint.state = "scaledToZero", "scaledToZero"
        endpoint.message, endpoint.target_replicas = "Endpoint scaled to zero: resume it to serve again", 0
        return self._commit_action(session, principal, endpoint, "scaled-to-zero")

    def delete(self, session: Session, principal: Principal, name: str) -> None:
        endpoint = self.get(session, principal, name)
        repository.delete_endpoint(session, endpoint)
        _wake(session)

    # --- the live adapter set (endpoints/adapters.py) ----------------------------------------

    def list_adapters(
        self, session: Session, principal: Principal, name: str
    ) -> builtins.list[EndpointAdapter]:
        return self.adapters.list(session, self.get(session, principal, name))

    def put_adapter(
        self, session: Session, principal: Principal, name: str, adapter: str, body: AdapterPut
    ) -> EndpointAdapter:
        """Adds or replaces one adapter; replicas converge without restarting."""
        endpoint = self.get(session, principal, name)
        row, changed = self.adapters.put(session, endpoint, adapter, body)
        if changed:
            what = row.source + (f"@{row.revision}" if row.revision else "")
            digest = f" (digest {row.digest[:12]})" if row.digest else ""
            repository.add_event(session, endpoint_id=endpoint.id, kind="adapter-set",
                                 message=f"adapter {adapter} = {what}{digest}")
            _wake(session)
        return row

    def delete_adapter(self, session: Session, principal: Principal, name: str, adapter: str) -> None:
        endpoint = self.get(session, principal, name)
        self.adapters.delete(session, endpoint, adapter)
        repository.add_event(session, endpoint_id=endpoint.id, kind="adapter-removed",
                             message=f"adapter {adapter} removed")
        _wake(session)

    @staticmethod
    def render_adapter(row: EndpointAdapter) -> dict[str, Any]:
        return render_adapter(row)

    # --- observability --------------------------------------------------------------------

    def logs(
        self, session: Session, principal: Principal, name: str, tail: int = 100
    ) -> builtins.list[ReplicaLogs]:
        """The last `tail` log lines of each replica of the endpoint, oldest replica first."""
        endpoint = self.get(session, principal, name)
        launcher = self.hardware.launcher
        out = []
        for replica in repository.replicas_of(session, endpoint_id=endpoint.id):
            lines = launcher.logs(replica.handle, tail) if replica.handle else []
            out.append(ReplicaLogs(replica.replica_key, replica.state, lines))
        return out

    def events(
        self, session: Session, principal: Principal, name: str, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        endpoint = self.get(session, principal, name)
        return [
            {"createdAt": to_wire(e.created_at), "kind": e.kind, "message": e.message}
            for e in repository.list_events(session, endpoint_id=endpoint.id, limit=limit)
        ]

    def usage(self, session: Session, principal: Principal, name: str) -> dict[str, Any]:
        """`GET .../usage`: per-adapter counters and latency percentiles since the endpoint's creation."""
        endpoint = self.get(session, principal, name)
        totals = usage_repository.totals(session, [endpoint.id]).get(endpoint.id, {})
        return usage_json(totals, since=endpoint.created_at)

    def usage_per_minute(
        self, session: Session, principal: Principal, name: str, minutes: int = 60
    ) -> builtins.list[tuple[str, datetime, dict[str, int]]]:
        """(adapter, minute, counters) of the last `minutes` minutes, oldest first (dashboard charts)."""
        endpoint = self.get(session, principal, name)
        since = usage_repository.window_start(utcnow(), minutes)
        return usage_repository.per_minute(session, endpoint.id, since)

    # --- helpers ------------------------------------------------------------------------

    def _check(self, spec: dict[str, Any], secrets: dict[str, str] | None) -> None:
        """The tenant rules (env and secret names, runtime flags, local paths) and the hardware."""
        check_spec(spec, self.roots)
        check_env(secrets or {}, "model.secrets")
        self._resolve(spec)

    def _check_quota(
        self, session: Session, principal: Principal, spec: dict[str, Any], endpoint: Endpoint | None
    ) -> None:
        catalog = self.hardware.catalog
        others = [e for e in repository.list_endpoints(session, namespace_id=principal.namespace_id)
                  if endpoint is None or e.id != endpoint.id]
        running = [Claim.of(EndpointSpec.from_stored(e.spec), catalog)
                   for e in others if e.desired_state == "running"]
        check_claims(self.quota, principal.namespace, Claim.of(EndpointSpec.from_stored(spec), catalog),
                     running, endpoints=len(others) + 1)

    def _resolve(self, spec: dict[str, Any]) -> None:
        self.hardware.resolve_spec(EndpointSpec.from_stored(spec), check_accelerator=True)

    @staticmethod
    def _touch(endpoint: Endpoint, principal: Principal) -> None:
        endpoint.updated_at = endpoint.last_active_at = utcnow()
        endpoint.updated_by = principal.namespace

    @staticmethod
    def _flush(session: Session, endpoint: Endpoint) -> None:
        name = endpoint.name  # read before the flush: a failed flush expires the row
        try:
            session.flush()
        except StaleDataError as e:
            raise ConflictError(f"Endpoint {name!r} was changed concurrently: fetch it and retry") from e

    def _commit_action(
        self, session: Session, principal: Principal, endpoint: Endpoint, kind: str
    ) -> Endpoint:
        self._touch(endpoint, principal)
        self._flush(session, endpoint)
        repository.add_event(session, endpoint_id=endpoint.id, kind=kind, message=f"endpoint {kind}")
        _wake(session)
        return endpoint
