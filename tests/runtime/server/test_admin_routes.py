"""The adapter admin API over HTTP, as the control plane calls it (with the replica's key), and the
bodies a hostile caller could send it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient

from tests.runtime.server.conftest import RunningServer


def _post(server: RunningServer, route: str, body: object, key: str | None = "own") -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.api_key}"} if key == "own" else {}
    return httpx.post(f"{server.url}{route}", json=body, headers=headers, timeout=60)


def _get(server: RunningServer, route: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(
        f"{server.url}{route}", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60
    ).json()


def test_an_adapter_loaded_then_unloaded_over_http_serves_then_is_refused(
    secured_server: RunningServer, adapters: dict[str, Path], engine
) -> None:  # type: ignore[no-untyped-def]
    loaded = _post(
        secured_server,
        "/v1/load_lora_adapter",
        {"lora_name": "support-v2", "lora_path": str(adapters["r16-all"])},
    )
    assert loaded.status_code == 200 and len(loaded.json()["digest"]) == 64
    listed = {a["name"]: a for a in _get(secured_server, "/v1/lora_adapters")["data"]}
    assert listed["support-v2"]["digest"] == loaded.json()["digest"]
    client = InferenceClient(secured_server.url, token=secured_server.api_key)
    text = client.text_generation("Hello there", max_new_tokens=8, adapter_id="support-v2")
    [expected] = engine.generate([_request("Hello there", "r16-all")])
    assert text == expected.generated_text  # the same files as the oracle's r16-all
    models = {m["id"]: m for m in _get(secured_server, "/v1/models")["data"]}
    assert models["support-v2"]["digest"] == loaded.json()["digest"]  # resident: it just served
    assert _post(secured_server, "/v1/unload_lora_adapter", {"lora_name": "support-v2"}).status_code == 200
    again = _post(secured_server, "/v1/unload_lora_adapter", {"lora_name": "support-v2"})
    assert again.status_code == 404 and "support-v2" in again.json()["error"]
    refused = httpx.post(
        f"{secured_server.url}/generate",
        timeout=60,
        headers={"Authorization": f"Bearer {secured_server.api_key}"},
        json={"inputs": "Hello", "parameters": {"adapter_id": "support-v2"}},
    )
    assert refused.status_code == 422 and "support-v2" in refused.json()["error"]


def _request(prompt: str, adapter: str):  # type: ignore[no-untyped-def]
    from lorafleet.runtime.engine import GenerationRequest, SamplingParams

    return GenerationRequest(prompt, SamplingParams(max_new_tokens=8), adapter_id=adapter)


@pytest.mark.parametrize(
    "body",
    [
        {"lora_name": "../etc", "lora_path": "/tmp"},
        {"lora_name": "a" * 300, "lora_path": "/tmp"},
        {"lora_name": "ok", "lora_path": "/models/../../etc"},
        {"lora_name": "ok", "lora_path": "x" * 5000},
        {"lora_name": "ok", "lora_path": "/tmp/a\x00b"},
        {"lora_name": "ok", "lora_path": "/nonexistent/adapter", "extra": 1},
        {"lora_name": "ok@1", "lora_path": "/tmp"},
        {"lora_name": "ok"},
        ["not", "an", "object"],
    ],
)
def test_bad_load_bodies_are_refused_with_422_and_load_nothing(secured_server: RunningServer, body) -> None:  # type: ignore[no-untyped-def]
    response = _post(secured_server, "/v1/load_lora_adapter", body)
    assert response.status_code == 422 and response.json()["error_type"] == "validation"
    assert "ok" not in {a["name"] for a in _get(secured_server, "/v1/lora_adapters")["data"]}


def test_a_folder_that_is_not_an_adapter_is_refused_naming_it(
    secured_server: RunningServer, tmp_path: Path
) -> None:
    response = _post(
        secured_server, "/v1/load_lora_adapter", {"lora_name": "empty", "lora_path": str(tmp_path)}
    )
    assert response.status_code == 422 and "adapter_config.json" in response.json()["error"]


def test_the_admin_api_needs_the_replicas_key(
    secured_server: RunningServer, adapters: dict[str, Path]
) -> None:
    body = {"lora_name": "sneaky", "lora_path": str(adapters["r8-qv"])}
    assert _post(secured_server, "/v1/load_lora_adapter", body, key=None).status_code == 401
    assert (
        _post(secured_server, "/v1/unload_lora_adapter", {"lora_name": "r8-qv"}, key=None).status_code == 401
    )
    assert httpx.get(f"{secured_server.url}/v1/lora_adapters", timeout=30).status_code == 401
    assert "sneaky" not in {a["name"] for a in _get(secured_server, "/v1/lora_adapters")["data"]}
