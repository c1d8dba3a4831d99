"""Every SDK function and error against a real control plane (reconciler off: no replicas)."""

from __future__ import annotations

import lorafleet
import pytest
from lorafleet import Client

from tests.sdk.conftest import CPU_INSTANCE


def _create(client: Client, name: str, **overrides) -> lorafleet.InferenceEndpoint:
    spec = {**CPU_INSTANCE, "repository": "org/tiny-model", "task": "text-generation", **overrides}
    return lorafleet.create_inference_endpoint(name, client=client, **spec)


def test_endpoint_lifecycle_through_every_function(static_cp, static_client, endpoint_name):
    name = endpoint_name(static_cp)
    created = _create(static_client, name, env={"LORA_ADAPTERS": "a=org/adapter-a"}, tags=["dev"])
    assert (created.name, created.namespace, created.status, created.url) == (name, "alice", "pending", None)
    assert created.repository == "org/tiny-model" and created.task == "text-generation"
    assert created.framework == "pytorch" and created.type == "protected" and created.revision is None
    assert created.created_at.tzinfo is not None
    assert created.raw["model"]["env"]["LORA_ADAPTERS"] == "a=org/adapter-a"

    fetched = lorafleet.get_inference_endpoint(name, client=static_client)
    assert fetched.raw == created.raw
    assert name in [e.name for e in lorafleet.list_inference_endpoints(client=static_client)]

    updated = lorafleet.update_inference_endpoint(name, max_replica=2, env={"MAX_INPUT_LENGTH": "64"},
                                                  client=static_client)  # fmt: skip
    assert updated.raw["compute"]["scaling"]["maxReplica"] == 2
    assert updated.raw["model"]["env"]["MAX_INPUT_LENGTH"] == "64"
    assert updated.repository == "org/tiny-model"  # a partial update keeps the rest

    paused = lorafleet.pause_inference_endpoint(name, client=static_client)
    assert (paused.status, paused.url) == ("paused", None)
    assert lorafleet.resume_inference_endpoint(name, client=static_client).status == "pending"
    assert lorafleet.scale_to_zero_inference_endpoint(name, client=static_client).status == "scaledToZero"

    assert lorafleet.delete_inference_endpoint(name, client=static_client) is None
    with pytest.raises(lorafleet.EndpointNotFound, match=name):
        lorafleet.get_inference_endpoint(name, client=static_client)


def test_endpoint_methods_update_the_object_in_place(static_cp, static_client, endpoint_name):
    endpoint = _create(static_client, endpoint_name(static_cp))
    assert endpoint.pause() is endpoint and endpoint.status == "paused"
    assert endpoint.resume() is endpoint and endpoint.status == "pending"
    assert endpoint.update(min_replica=0, max_replica=3) is endpoint
    assert endpoint.raw["compute"]["scaling"] == {**endpoint.raw["compute"]["scaling"], "minReplica": 0,
                                                  "maxReplica": 3}  # fmt: skip
    assert endpoint.scale_to_zero().status == "scaledToZero"
    assert endpoint.fetch().status == "scaledToZero"
    assert isinstance(endpoint.logs(), str)
    endpoint.delete()
    with pytest.raises(lorafleet.EndpointNotFound):
        endpoint.fetch()


def test_environment_configures_the_default_client(static_cp, endpoint_name, monkeypatch):
    monkeypatch.setenv("LORAFLEET_URL", static_cp.url)
    monkeypatch.setenv("LORAFLEET_TOKEN", static_cp.token)
    name = endpoint_name(static_cp)
    spec = {**CPU_INSTANCE, "repository": "org/tiny-model"}
    assert lorafleet.create_inference_endpoint(name, **spec).namespace == static_cp.namespace
    assert lorafleet.get_inference_endpoint(name).name == name
    monkeypatch.setenv("LORAFLEET_TOKEN", "lf_not-a-real-token")
    with pytest.raises(lorafleet.AuthenticationError):
        lorafleet.get_inference_endpoint(name)
    assert lorafleet.get_inference_endpoint(name, token=static_cp.token).name == name  # explicit wins


def test_duplicate_name_is_a_conflict(static_cp, static_client, endpoint_name):
    name = endpoint_name(static_cp)
    _create(static_client, name)
    with pytest.raises(lorafleet.Conflict, match="already exists") as info:
        _create(static_client, name)
    assert info.value.status_code == 409


def test_unknown_instance_type_is_a_validation_error_naming_it(static_cp, static_client, endpoint_name):
    with pytest.raises(lorafleet.ValidationError, match="nvidia-imaginary") as info:
        _create(static_client, endpoint_name(static_cp), instance_type="nvidia-imaginary")
    assert info.value.status_code == 400


def test_malformed_body_is_a_validation_error(static_cp, static_client, endpoint_name):
    with pytest.raises(lorafleet.ValidationError) as info:
        _create(static_client, endpoint_name(static_cp), min_replica="many")
    assert info.value.status_code in (400, 422) and "minReplica" in info.value.message


def test_bad_token_is_an_authentication_error(static_cp):
    with Client(static_cp.url, "lf_wrong") as client:
        with pytest.raises(lorafleet.AuthenticationError) as info:
            lorafleet.list_inference_endpoints("alice", client=client)
    assert info.value.status_code == 401 and info.value.message


def test_another_namespace_answers_not_found(static_cp, static_client, endpoint_name):
    name = endpoint_name(static_cp)
    _create(static_client, name)
    with Client(static_cp.url, static_cp.create_token("bob")) as bob:
        assert bob.namespace() == "bob"
        with pytest.raises(lorafleet.EndpointNotFound):
            lorafleet.get_inference_endpoint(name, namespace="alice", client=bob)
        with pytest.raises(lorafleet.EndpointNotFound):
            lorafleet.get_inference_endpoint(name, client=bob)
        assert lorafleet.list_inference_endpoints("*", client=bob) == []
