"""Pages: the endpoint list, the create form, an endpoint's page, and their live partials."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import Response
from lorafleet.controlplane.clock import utcnow
from lorafleet.controlplane.dashboard.errors import field_for, validation_errors
from lorafleet.controlplane.dashboard.examples import examples
from lorafleet.controlplane.dashboard.forms import EndpointForm, FormError, build_create_payload
from lorafleet.controlplane.dashboard.routing import CallerDep, CsrfChecked, router
from lorafleet.controlplane.dashboard.usage_view import CHART_MINUTES, usage_views
from lorafleet.controlplane.dashboard.views import (
    AdapterView,
    EndpointView,
    HardwareChoices,
    event_views,
    live_adapters,
    logs_text,
    replica_views,
)
from lorafleet.controlplane.dashboard.web import Caller, redirect, render
from lorafleet.controlplane.deps import EndpointServiceDep, HardwareDep, SessionDep
from lorafleet.controlplane.endpoints.schemas import EndpointCreate
from lorafleet.controlplane.endpoints.service import EndpointService
from lorafleet.controlplane.errors import ControlPlaneError, NotFoundError
from pydantic import ValidationError
from sqlalchemy.orm import Session

LOG_TAIL_LINES = 60
NOTICES = {
    "created": "Endpoint created: it starts as soon as a replica is up.",
    "pause": "Endpoint paused.",
    "resume": "Endpoint resumed: a replica is starting.",
    "scale-to-zero": "Endpoint scaled to zero.",
    "deleted": "Endpoint deleted.",
    "adapter-set": "Adapter saved: the replicas load it without restarting.",
    "adapter-removed": "Adapter removed: the replicas unload it.",
}


def _endpoint_views(db: Session, caller: Caller, service: EndpointService) -> list[EndpointView]:
    return [EndpointView.from_raw(service.render(e), _live(service.adapters.list(db, e), service))
            for e in service.list(db, caller.principal)]


def _live(rows: Any, service: EndpointService, usage: Any = None) -> list[AdapterView]:
    return live_adapters([service.render_adapter(r) for r in rows], usage)


@router.get("")
def endpoint_list(request: Request, db: SessionDep, caller: CallerDep, service: EndpointServiceDep,
                  did: str | None = None) -> Response:
    return render(request, "list.html", {"endpoints": _endpoint_views(db, caller, service),
                                         "notice": NOTICES.get(did or "")}, caller=caller)


@router.get("/partials/endpoints")
def endpoint_rows(request: Request, db: SessionDep, caller: CallerDep,
                  service: EndpointServiceDep) -> Response:
    return render(request, "_endpoint_rows.html", {"endpoints": _endpoint_views(db, caller, service)},
                  caller=caller)


def _create_page(request: Request, caller: Caller, hardware: Any, form: EndpointForm,
                 errors: dict[str, str], status_code: int = 200) -> Response:
    choices = HardwareChoices.from_provider(hardware.render())
    if not form.vendor and choices.vendors:  # first visit: preselect the first catalog entry
        first = choices.instance_types[0] if choices.instance_types else None
        form = EndpointForm(**{**form.values(), "vendor": choices.vendors[0],
                               "region": first.region if first else "",
                               "instance_type": first.instance_type if first else ""})
    return render(request, "create.html", {"form": form, "errors": errors, "choices": choices},
                  status_code=status_code, caller=caller)


@router.get("/new")
def create_form(request: Request, caller: CallerDep, hardware: HardwareDep) -> Response:
    return _create_page(request, caller, hardware, EndpointForm(), {})


async def read_endpoint_form(request: Request) -> EndpointForm:
    return EndpointForm.from_form(await request.form())


@router.post("/new", dependencies=[CsrfChecked])
def create_endpoint(request: Request, caller: CallerDep, hardware: HardwareDep, service: EndpointServiceDep,
                    db: SessionDep, form: Annotated[EndpointForm, Depends(read_endpoint_form)]) -> Response:
    choices = HardwareChoices.from_provider(hardware.render())
    accelerator = choices.accelerator_for(form.vendor, form.region, form.instance_type, form.instance_size)
    try:
        body = EndpointCreate.model_validate(build_create_payload(form, accelerator=accelerator))
        service.create(db, caller.principal, body)
    except FormError as e:
        return _create_page(request, caller, hardware, form, e.errors, status_code=400)
    except ValidationError as e:
        return _create_page(request, caller, hardware, form, validation_errors(e), status_code=422)
    except ControlPlaneError as e:
        db.rollback()
        return _create_page(request, caller, hardware, form, {field_for(e): e.message},
                            status_code=e.status_code)
    return redirect(f"/endpoints/{quote(body.name)}?did=created")


def _status_context(db: Session, caller: Caller, service: EndpointService, name: str) -> dict[str, Any]:
    endpoint = service.get(db, caller.principal, name)
    usage = service.usage(db, caller.principal, name)
    return {"ep": EndpointView.from_raw(service.render(endpoint), _live(service.adapters.list(db, endpoint),
                                                                        service, usage))}


def _call_context(request: Request, caller: Caller, ep: EndpointView) -> dict[str, Any]:
    """The endpoint's stable URL (known before it runs) and examples of calling it."""
    url = request.app.state.settings.endpoint_url(caller.principal.namespace, ep.name)
    return {"gateway_url": url,
            "examples": examples(url, ep.adapters[0].id if ep.adapters else None, ep.type == "public")}


def _activity_context(db: Session, caller: Caller, service: EndpointService, name: str) -> dict[str, Any]:
    logs = service.logs(db, caller.principal, name, tail=LOG_TAIL_LINES)
    usage = service.usage(db, caller.principal, name)
    minutes = service.usage_per_minute(db, caller.principal, name, minutes=CHART_MINUTES)
    return {
        "events": event_views(service.events(db, caller.principal, name, limit=50)),
        "replicas": replica_views(logs),
        "logs": logs_text(logs, tail=LOG_TAIL_LINES),
        "usage": usage_views(usage, minutes, utcnow()),
    }


def endpoint_page(request: Request, db: Session, caller: Caller, service: EndpointService, name: str,
                  *, notice: str | None = None, page_error: str | None = None,
                  trial: Any = None, status_code: int = 200) -> Response:
    """An endpoint's page; also re-rendered by actions that fail and by a no-JS "Try it"."""
    try:
        context = _status_context(db, caller, service, name)
        context.update(_call_context(request, caller, context["ep"]))
        context.update(_activity_context(db, caller, service, name))
    except NotFoundError as e:
        return render(request, "error.html", {"title": "Endpoint not found", "message": e.message},
                      status_code=404, caller=caller)
    context.update(notice=notice, page_error=page_error, trial=trial)
    return render(request, "endpoint.html", context, status_code=status_code, caller=caller)


@router.get("/endpoints/{name}")
def endpoint_detail(request: Request, name: str, db: SessionDep, caller: CallerDep,
                    service: EndpointServiceDep, did: str | None = None) -> Response:
    return endpoint_page(request, db, caller, service, name, notice=NOTICES.get(did or ""))


@router.get("/partials/endpoints/{name}")
def endpoint_status(request: Request, name: str, db: SessionDep, caller: CallerDep,
                    service: EndpointServiceDep) -> Response:
    return _status_partial(request, db, caller, service, name, "_endpoint_status.html")


@router.get("/partials/endpoints/{name}/adapters")
def endpoint_adapters(request: Request, name: str, db: SessionDep, caller: CallerDep,
                      service: EndpointServiceDep) -> Response:
    return _status_partial(request, db, caller, service, name, "_endpoint_adapters.html")


def _status_partial(request: Request, db: Session, caller: Caller, service: EndpointService, name: str,
                    template: str) -> Response:
    """A live part of the endpoint page, from the same status context; 404 text when it is gone."""
    try:
        context = _status_context(db, caller, service, name)
    except NotFoundError as e:
        return Response(e.message, status_code=404, media_type="text/plain")
    return render(request, template, context, caller=caller)


@router.get("/partials/endpoints/{name}/activity")
def endpoint_activity(request: Request, name: str, db: SessionDep, caller: CallerDep,
                      service: EndpointServiceDep) -> Response:
    try:
        context = _activity_context(db, caller, service, name)
    except NotFoundError as e:
        return Response(e.message, status_code=404, media_type="text/plain")
    return render(request, "_endpoint_activity.html", context, caller=caller)
