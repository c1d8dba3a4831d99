"""Endpoint actions: Pause, Resume, Scale to zero, Delete (confirmed), Try it, and adding or
removing an adapter of the live set."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from lorafleet.controlplane.dashboard.routes_pages import endpoint_page
from lorafleet.controlplane.dashboard.routing import CallerDep, CsrfChecked, router
from lorafleet.controlplane.dashboard.tryit import Trial, generate
from lorafleet.controlplane.dashboard.web import redirect, render
from lorafleet.controlplane.deps import EndpointServiceDep, SessionDep
from lorafleet.controlplane.endpoints.adapters import AdapterPut
from lorafleet.controlplane.errors import ControlPlaneError
from pydantic import ValidationError

ACTIONS = ("pause", "resume", "scale-to-zero")


@router.post("/endpoints/{name}/delete", dependencies=[CsrfChecked])
def delete_endpoint(request: Request, name: str, db: SessionDep, caller: CallerDep,
                    service: EndpointServiceDep, confirm: Annotated[str, Form()] = "") -> Response:
    if confirm != "yes":  # without JavaScript's confirm(), ask on a page of its own
        return render(request, "confirm_delete.html", {"name": name}, caller=caller)
    try:
        service.delete(db, caller.principal, name)
    except ControlPlaneError as e:
        db.rollback()
        return endpoint_page(request, db, caller, service, name, page_error=e.message,
                             status_code=e.status_code)
    return redirect("?did=deleted")


@router.post("/endpoints/{name}/try", dependencies=[CsrfChecked])
async def try_endpoint(request: Request, name: str, db: SessionDep, caller: CallerDep,
                       service: EndpointServiceDep, prompt: Annotated[str, Form()] = "",
                       adapter_id: Annotated[str, Form()] = "",
                       max_new_tokens: Annotated[str, Form()] = "20") -> Response:
    wants_json = request.headers.get("accept", "").startswith("application/json")
    await run_in_threadpool(db.commit)  # release the connection before waiting on the endpoint
    trial = await generate(Trial(prompt, adapter_id, max_new_tokens), gateway=request.app.state.gateway.app,
                           namespace=caller.principal.namespace, name=name, token=caller.token)
    if wants_json:
        if trial.error:
            return JSONResponse({"error": trial.error}, status_code=trial.status_code)
        return JSONResponse({"generated_text": trial.text, "label": trial.label})
    return await run_in_threadpool(endpoint_page, request, db, caller, service, name, trial=trial,
                                   status_code=trial.status_code)


@router.post("/endpoints/{name}/adapters", dependencies=[CsrfChecked])
def put_adapter(request: Request, name: str, db: SessionDep, caller: CallerDep, service: EndpointServiceDep,
                adapter: Annotated[str, Form()] = "", source: Annotated[str, Form()] = "",
                revision: Annotated[str, Form()] = "") -> Response:
    """The Adapters section's form: adds an adapter or replaces the one of that name."""
    try:
        body = AdapterPut(source=source.strip(), revision=revision.strip() or None)
        service.put_adapter(db, caller.principal, name, adapter.strip(), body)
    except ValidationError as e:
        message = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        return endpoint_page(request, db, caller, service, name, page_error=message, status_code=422)
    except ControlPlaneError as e:
        db.rollback()
        return endpoint_page(request, db, caller, service, name, page_error=e.message,
                             status_code=e.status_code)
    return redirect(f"/endpoints/{quote(name)}?did=adapter-set")


@router.post("/endpoints/{name}/adapters/remove", dependencies=[CsrfChecked])
def remove_adapter(request: Request, name: str, db: SessionDep, caller: CallerDep,
                   service: EndpointServiceDep, adapter: Annotated[str, Form()] = "") -> Response:
    try:
        service.delete_adapter(db, caller.principal, name, adapter)
    except ControlPlaneError as e:
        db.rollback()
        return endpoint_page(request, db, caller, service, name, page_error=e.message,
                             status_code=e.status_code)
    return redirect(f"/endpoints/{quote(name)}?did=adapter-removed")


# Registered last: the literal /delete, /try and /adapters routes above must win over `{action}`.
@router.post("/endpoints/{name}/{action}", dependencies=[CsrfChecked])
def endpoint_action(request: Request, name: str, action: str, db: SessionDep, caller: CallerDep,
                    service: EndpointServiceDep) -> Response:
    if action not in ACTIONS:
        return render(request, "error.html", {"title": "Unknown action", "message": f"No action {action!r}."},
                      status_code=404, caller=caller)
    run = {"pause": service.pause, "resume": service.resume, "scale-to-zero": service.scale_to_zero}[action]
    try:
        run(db, caller.principal, name)
    except ControlPlaneError as e:
        db.rollback()
        return endpoint_page(request, db, caller, service, name, page_error=e.message,
                             status_code=e.status_code)
    return redirect(f"/endpoints/{quote(name)}?did={action}")
