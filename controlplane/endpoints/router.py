"""REST routes of HF Inference Endpoints v2: `/v2/endpoint/{namespace}[/{name}[/action]]`.

A token sees only its own namespace: any other namespace answers 404, exactly as a missing
endpoint would, so existence never leaks.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from lorafleet.controlplane.auth.service import Principal
from lorafleet.controlplane.deps import EndpointServiceDep, PrincipalDep, SessionDep
from lorafleet.controlplane.endpoints.adapters import AdapterPut
from lorafleet.controlplane.endpoints.schemas import EndpointCreate, EndpointUpdate
from lorafleet.controlplane.errors import BadRequestError, NotFoundError

router = APIRouter(prefix="/v2/endpoint", tags=["endpoints"])
Json = dict[str, Any]


def _own(principal: Principal, namespace: str) -> None:
    if namespace != principal.namespace:
        raise NotFoundError(f"Namespace {namespace!r} not found")


def _if_match(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip().strip('"').removeprefix("W/").strip('"'))
    except ValueError as e:
        raise BadRequestError("If-Match must be the endpoint's revision number", field="If-Match") from e


@router.get("/{namespace}", summary="List endpoints")
def list_endpoints(
    namespace: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Json:
    _own(principal, namespace)
    return {"items": [service.render(e) for e in service.list(session, principal)]}


@router.post("/{namespace}", summary="Create an endpoint")
def create_endpoint(
    namespace: str,
    body: EndpointCreate,
    principal: PrincipalDep,
    session: SessionDep,
    service: EndpointServiceDep,
) -> Json:
    _own(principal, namespace)
    return service.render(service.create(session, principal, body))


@router.get("/{namespace}/{name}", summary="Get an endpoint")
def get_endpoint(
    namespace: str, name: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Json:
    _own(principal, namespace)
    return service.render(service.get(session, principal, name))


@router.put("/{namespace}/{name}", summary="Update an endpoint (deep partial merge; null = unchanged)")
def update_endpoint(
    namespace: str,
    name: str,
    body: EndpointUpdate,
    principal: PrincipalDep,
    session: SessionDep,
    service: EndpointServiceDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Json:
    _own(principal, namespace)
    return service.render(service.update(session, principal, name, body, _if_match(if_match)))


@router.delete("/{namespace}/{name}", summary="Delete an endpoint (its replicas are stopped)")
def delete_endpoint(
    namespace: str, name: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Response:
    _own(principal, namespace)
    service.delete(session, principal, name)
    return Response(status_code=200, content=b"{}", media_type="application/json")


@router.post("/{namespace}/{name}/pause", summary="Pause: stop replicas, keep the spec")
def pause_endpoint(
    namespace: str, name: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Json:
    _own(principal, namespace)
    return service.render(service.pause(session, principal, name))


@router.post("/{namespace}/{name}/resume", summary="Resume a paused, scaled-to-zero or failed endpoint")
def resume_endpoint(
    namespace: str, name: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Json:
    _own(principal, namespace)
    return service.render(service.resume(session, principal, name))


@router.post("/{namespace}/{name}/scale-to-zero", summary="Stop replicas until resumed")
def scale_to_zero_endpoint(
    namespace: str, name: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Json:
    _own(principal, namespace)
    return service.render(service.scale_to_zero(session, principal, name))


@router.get("/{namespace}/{name}/logs", summary="Recent log lines of each replica")
def endpoint_logs(
    namespace: str,
    name: str,
    principal: PrincipalDep,
    session: SessionDep,
    service: EndpointServiceDep,
    tail: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> Json:
    _own(principal, namespace)
    replicas = service.logs(session, principal, name, tail)
    return {
        "replicas": [{"id": r.replica, "state": r.state, "lines": r.lines} for r in replicas],
        "lines": [line for r in replicas for line in r.lines],
    }


@router.get("/{namespace}/{name}/events", summary="What happened to the endpoint, oldest first")
def endpoint_events(
    namespace: str,
    name: str,
    principal: PrincipalDep,
    session: SessionDep,
    service: EndpointServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Json:
    _own(principal, namespace)
    return {"items": service.events(session, principal, name, limit)}


@router.get("/{namespace}/{name}/usage", summary="Requests, errors, tokens and latencies per adapter")
def endpoint_usage(
    namespace: str, name: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Json:
    _own(principal, namespace)
    return service.usage(session, principal, name)


@router.get("/{namespace}/{name}/adapters", summary="The endpoint's adapters and their readiness")
def list_adapters(
    namespace: str, name: str, principal: PrincipalDep, session: SessionDep, service: EndpointServiceDep
) -> Json:
    _own(principal, namespace)
    return {"items": [service.render_adapter(a) for a in service.list_adapters(session, principal, name)]}


# `{adapter:path}`: Hub-style names hold a '/' (`org/name`), as the runtime's adapter ids do.
@router.put("/{namespace}/{name}/adapters/{adapter:path}", summary="Add or replace an adapter (no restart)")
def put_adapter(
    namespace: str,
    name: str,
    adapter: str,
    body: AdapterPut,
    principal: PrincipalDep,
    session: SessionDep,
    service: EndpointServiceDep,
) -> Json:
    _own(principal, namespace)
    return service.render_adapter(service.put_adapter(session, principal, name, adapter, body))


@router.delete("/{namespace}/{name}/adapters/{adapter:path}", summary="Remove an adapter (no restart)")
def delete_adapter(
    namespace: str, name: str, adapter: str, principal: PrincipalDep, session: SessionDep,
    service: EndpointServiceDep,
) -> Response:
    _own(principal, namespace)
    service.delete_adapter(session, principal, name, adapter)
    return Response(status_code=200, content=b"{}", media_type="application/json")
