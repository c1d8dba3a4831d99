"""What pages show, built from the REST API's JSON; where API errors land on the form."""

from __future__ import annotations

import pytest
from lorafleet.controlplane.dashboard.errors import FORM_LEVEL, field_for, form_field, validation_errors
from lorafleet.controlplane.dashboard.views import (
    EndpointView,
    HardwareChoices,
    event_views,
    logs_text,
    parse_lora_adapters,
    state_class,
)
from lorafleet.controlplane.endpoints.schemas import EndpointCreate
from lorafleet.controlplane.errors import BadRequestError, ConflictError
from pydantic import ValidationError

RAW = {
    "name": "multi", "type": "protected", "healthRoute": "/health",
    "provider": {"vendor": "aws", "region": "us-east-1"},
    "compute": {"accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x1",
                "scaling": {"minReplica": 1, "maxReplica": 2}},
    "model": {"repository": "mistralai/Mistral-7B-v0.1", "framework": "pytorch", "revision": None,
              "task": None, "env": {"LORA_ADAPTERS": "predibase/magicoder,support=/data/support",
                                    "MAX_INPUT_LENGTH": "1024"}},
    "status": {"state": "running", "message": "Endpoint is ready", "url": "http://127.0.0.1:9000",
               "readyReplica": 1, "targetReplica": 1, "createdAt": "2024-07-18T10:00:00.000000Z",
               "updatedAt": "2024-07-18T10:00:00.000000Z"},
}

L4 = {"accelerator": "gpu", "architecture": "Nvidia L4", "instanceType": "nvidia-l4"}
PROVIDER = {"vendors": [
    {"name": "aws", "regions": [
        {"name": "us-east-1", "label": "N. Virginia", "computes": [
            {**L4, "instanceSize": "x1"}, {**L4, "instanceSize": "x4"},
            {"instanceType": "intel-icl", "instanceSize": "x2", "accelerator": "cpu",
             "architecture": "Intel"},
        ]}]},
    {"name": "local", "regions": [
        {"name": "local", "label": "This host", "computes": [
            {"instanceType": "cpu", "instanceSize": "x1", "accelerator": "cpu", "architecture": "CPU"}]}]},
]}


def test_endpoint_view_reads_adapters_replicas_and_url_from_the_api_json() -> None:
    view = EndpointView.from_raw(RAW)
    assert [a.id for a in view.adapters] == ["predibase/magicoder", "support"]
    assert view.adapters[1].source == "/data/support"
    assert (view.ready_replicas, view.target_replicas) == (1, 1)
    assert view.url == "http://127.0.0.1:9000"
    assert view.instance == "aws · us-east-1 · nvidia-l4 x1"
    assert view.env == [("MAX_INPUT_LENGTH", "1024")]  # LORA_ADAPTERS is shown as the adapter list
    assert view.state_class == "ok"


def test_endpoint_view_without_url_or_env() -> None:
    raw = {**RAW, "model": {**RAW["model"], "env": {}}, "status": {**RAW["status"], "state": "pending"}}
    del raw["status"]["url"]
    view = EndpointView.from_raw(raw)
    assert view.url is None and view.adapters == [] and view.state_class == "busy"


@pytest.mark.parametrize("state, family", [
    ("running", "ok"), ("initializing", "busy"), ("paused", "idle"), ("scaledToZero", "idle"),
    ("failed", "bad"), ("updateFailed", "bad"), ("stopping", "busy"), ("somethingNew", "idle")])
def test_every_state_has_a_colour_family(state: str, family: str) -> None:
    assert state_class(state) == family


def test_lora_adapters_parse_ignores_empty_items() -> None:
    assert [a.id for a in parse_lora_adapters(" a , ,b=/p,")] == ["a", "b"]


def test_timeline_is_newest_first() -> None:
    events = [{"createdAt": "2024-01-01T00:00:00.000000Z", "kind": "created", "message": "m1"},
              {"createdAt": "2024-01-01T00:01:00.000000Z", "kind": "ready", "message": "m2"}]
    views = event_views(events)
    assert [v.kind for v in views] == ["ready", "created"]
    assert views[0].at_text == "2024-01-01 00:01:00 UTC"


def test_logs_keep_the_tail_of_each_replica_under_a_header() -> None:
    class Logs:
        def __init__(self, replica: str, lines: list[str]) -> None:
            self.replica, self.state, self.lines = replica, "running", lines

    text = logs_text([Logs("rep-1", ["a", "b", "c"]), Logs("rep-2", [])], tail=2)
    assert text == "== rep-1 (running) ==\nb\nc\n\n== rep-2 (running) =="


def test_hardware_choices_follow_vendor_and_region() -> None:
    choices = HardwareChoices.from_provider(PROVIDER)
    assert choices.vendors == ["aws", "local"]
    assert choices.has_region("aws", "us-east-1") and not choices.has_region("local", "us-east-1")
    types = [(c.vendor, c.instance_type) for c in choices.instance_types]
    # one choice per type, not per size
    assert types == [("aws", "nvidia-l4"), ("aws", "intel-icl"), ("local", "cpu")]
    assert choices.sizes == ["x1", "x4", "x2"]
    assert choices.accelerator_for("aws", "us-east-1", "intel-icl", "x2") == "cpu"
    # an unknown size: the type decides (the service then names the sizes that exist)
    assert choices.accelerator_for("aws", "us-east-1", "nvidia-l4", "x9") == "gpu"


def test_service_errors_land_on_the_field_they_name() -> None:
    assert field_for(BadRequestError("bad", field="compute.instanceType")) == "instance_type"
    assert field_for(BadRequestError("bad", field="provider.region")) == "region"
    assert field_for(BadRequestError("bad", field="model.image.custom.env")) == FORM_LEVEL
    assert field_for(ConflictError("Endpoint 'x' already exists")) == "name"
    assert field_for(BadRequestError("no field")) == FORM_LEVEL
    assert form_field("compute.scaling.minReplica") == "min_replica"


def test_schema_errors_land_on_their_fields_with_the_api_message() -> None:
    body = {"name": "Bad Name!", "provider": {"vendor": "aws", "region": "r"},
            "compute": {"accelerator": "gpu", "instanceType": "t", "instanceSize": "x1",
                        "scaling": {"minReplica": 1, "maxReplica": 0}},
            "model": {"repository": "m"}}
    with pytest.raises(ValidationError) as caught:
        EndpointCreate.model_validate(body)
    errors = validation_errors(caught.value)
    assert "name" in errors and errors["name"].startswith("name:")
    assert "max_replica" in errors
