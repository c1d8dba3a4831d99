"""Per-endpoint reconciliation: view → `decide` → `apply`, and the launches' outcome → `settle`.

`EndpointPlanner` owns the in-memory clocks of every endpoint (restart backoff, scale-down
cooldown, request counters); everything else it needs is in the database, so a new leader
continues where the last one left. It resolves what a replica would run (`view`: catalog, the
replica's settings, local folders) *before* the transaction, since the catalog may ask the
launcher (Ray's nodes); `reconcile` then decides and writes in the caller's short transaction and
makes no launcher call.
"""

from __future__ import annotations

import logging
import secrets as token_source
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.clock import utcnow
from lorafleet.controlplane.endpoints.adapters import adapter_items, lora_adapters_value
from lorafleet.controlplane.endpoints.apply import apply
from lorafleet.controlplane.endpoints.decide import decide, settle
from lorafleet.controlplane.endpoints.local_paths import LocalRoots
from lorafleet.controlplane.endpoints.plan import (
    AdapterItem,
    Clocks,
    EndpointView,
    Launch,
    LaunchOutcome,
    LaunchReport,
    Now,
    Placement,
    Plan,
    PlannerLimits,
    ReplicaView,
)
from lorafleet.controlplane.endpoints.quota import QuotaRoom
from lorafleet.controlplane.endpoints.spec import runtime_env
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec
from lorafleet.controlplane.errors import ControlPlaneError
from lorafleet.controlplane.launchers.base import Launcher, LocalFolder, NoCapacityError, ReplicaSpec
from lorafleet.controlplane.models import Endpoint, EndpointAdapter, Replica
from lorafleet.controlplane.probes import Probe
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings
from sqlalchemy.orm import Session

log = logging.getLogger("lorafleet.controlplane.reconciler")


@dataclass(frozen=True)
class Decision:
    """A written plan: the rows to stop and the launches to make once it is committed."""

    view: EndpointView
    plan: Plan
    stopping: list[Replica]
    launches: list[Launch]


class EndpointPlanner:
    def __init__(
        self, settings: Settings, launcher: Launcher, hardware: Hardware, secret_box: SecretBox
    ) -> None:
        self.limits = PlannerLimits.from_settings(settings)
        self.settings = settings
        self.launcher = launcher
        self.hardware = hardware
        self.secret_box = secret_box
        self.roots = LocalRoots(settings.local_root_paths)
        # Keyed by endpoint id: ids are never reused (models.Endpoint), so no state passes on.
        self._clocks: dict[int, Clocks] = {}

    def view(
        self, endpoint: Endpoint, namespace: str, room: QuotaRoom | None = None, load: int = 0,
        adapters: Sequence[EndpointAdapter] = (),
    ) -> EndpointView:
        """The endpoint as `decide` sees it (`adapters`: its live set's rows). Call with no
        transaction open: resolving the instance may ask the launcher. Raises `ControlPlaneError`
        if the secrets cannot be opened."""
        spec = EndpointSpec.from_stored(endpoint.spec)
        sealed = endpoint.secrets_encrypted
        secrets = self.secret_box.open(sealed) if sealed else {}
        items = adapter_items(adapters, self.roots)
        placement: Placement | str | None = None
        if endpoint.desired_state == "running" and endpoint.state != "failed":
            placement = self._place(spec, secrets, items)
        return EndpointView(
            id=endpoint.id, namespace=namespace, name=endpoint.name, revision=endpoint.revision,
            desired_state=endpoint.desired_state, state=endpoint.state, message=endpoint.message,
            url=endpoint.url, failure_count=endpoint.failure_count, ready_replicas=endpoint.ready_replicas,
            target_replicas=endpoint.target_replicas, last_active_at=endpoint.last_active_at, spec=spec,
            digest=spec.replica_digest(secrets), placement=placement, room=room, load=load,
            gateway_url=self.settings.endpoint_url(namespace, endpoint.name), adapters=items,
        )

    def _place(
        self, spec: EndpointSpec, secrets: Mapping[str, str], adapters: Sequence[AdapterItem]
    ) -> Placement | str:
        try:
            instance = self.hardware.resolve_spec(spec)
            env, folders = runtime_env(dict(spec.raw), dict(secrets), self.roots)
        except ControlPlaneError as e:
            return f"cannot place the endpoint: {e.message}"
        # The live set, not the spec's seed, is what a new replica starts with, and its folders are
        # what it may read (adapters added later reach it through `Launcher.adapter_path`).
        env.pop("LORA_ADAPTERS", None)
        if value := lora_adapters_value(adapters):
            env["LORA_ADAPTERS"] = value
        local = tuple(LocalFolder(a.load_path, a.load_path) for a in adapters
                      if a.load_path is not None and a.load_path.startswith("/"))
        return Placement(instance, env, (*folders, *local))

    def reconcile(
        self,
        session: Session,
        endpoint: Endpoint,
        view: EndpointView,
        replicas: Sequence[Replica],
        probes: Mapping[str, Probe],
    ) -> Decision:
        """Decides for one endpoint and writes the plan; the caller commits, then stops and starts.

        Args:
            session: the open session.
            endpoint: the endpoint row (its status columns are kept in step).
            view: `view(endpoint, ...)`, built before the transaction.
            replicas: its replica rows, none `stopping`.
            probes: replica key → probe, for rows with a handle.
        """
        now = Now(utcnow(), time.monotonic())
        clocks = self._clocks.get(view.id, Clocks())
        plan = decide(view, [ReplicaView.of(r) for r in replicas], probes, clocks, now, self.limits)
        self._clocks[view.id] = plan.clocks
        rows = {r.replica_key: r for r in replicas}
        stopping, launches = apply(session, plan, endpoint, rows, lambda: self._new_launch(session, view))
        return Decision(view, plan, stopping, launches)

    def _new_launch(self, session: Session, view: EndpointView) -> Launch:
        placement = view.placement
        assert isinstance(placement, Placement), "decide() launches only placed endpoints"
        key, api_key = f"rep-{uuid.uuid4().hex[:12]}", token_source.token_urlsafe(32)
        spec = ReplicaSpec(
            key, view.namespace, view.name, placement.instance, placement.env,
            without_adapters(view.spec.args), view.spec.health_route, api_key=api_key,
            folders=placement.folders, digest=view.digest,
        )
        replica = Replica(replica_key=key, endpoint_id=view.id, launcher=self.launcher.name,
                          spec_digest=view.digest, state="starting",
                          api_key_encrypted=self.secret_box.seal({"api_key": api_key}),
                          adapter_versions={a.name: a.tag for a in view.adapters if a.load_path is not None})
        session.add(replica)
        return Launch(replica, spec)

    # --- after the launches (each step in its own short transaction) ----------------------

    @staticmethod
    def record_launches(session: Session, outcomes: list[LaunchOutcome]) -> None:
        """Saves the handles of started replicas; deletes the rows of launches that failed."""
        for outcome in outcomes:
            if outcome.handle is not None:
                outcome.launch.replica.handle = outcome.handle
            else:
                session.delete(outcome.launch.replica)

    def after_launches(
        self, session: Session, endpoint: Endpoint, decision: Decision, outcomes: list[LaunchOutcome]
    ) -> None:
        """Events, failure counting and the status once the plan's launches are recorded."""
        view = replace(decision.view, state=endpoint.state, message=endpoint.message,
                       failure_count=endpoint.failure_count)
        reports = [_report(outcome) for outcome in outcomes]
        after = settle(view, decision.plan, reports)
        self._clocks[view.id] = after.clocks
        apply(session, after, endpoint, {}, _no_launch)


def without_adapters(args: Sequence[str]) -> tuple[str, ...]:
    """`model.args` less `--lora-adapters` (the flag would win over the live set's `LORA_ADAPTERS`)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--lora-adapters":
            skip = True
        elif not arg.startswith("--lora-adapters="):
            kept.append(arg)
    return tuple(kept)


def _report(outcome: LaunchOutcome) -> LaunchReport:
    launch, error = outcome.launch, outcome.error
    instance_id = launch.spec.instance.id
    if error is None:
        return LaunchReport(launch.spec.replica_key, instance_id)
    if isinstance(error, NoCapacityError):
        return LaunchReport(launch.spec.replica_key, instance_id, error.message, no_capacity=True)
    return LaunchReport(launch.spec.replica_key, instance_id, str(error))


def _no_launch() -> Launch:
    raise AssertionError("settle() plans no launch")
