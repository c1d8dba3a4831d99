"""`endpoint.adapters`, `add_adapter`, `remove_adapter` (sync and async) and `lorafleet endpoints
adapters list|add|remove` against a real control plane (reconciler off: the set and its API;
convergence on real replicas is tests/controlplane/test_adapters_live.py)."""

from __future__ import annotations

import json
from pathlib import Path

import lorafleet
import pytest
from lorafleet import AsyncClient, Client, EndpointAdapter, aio, cli
from lorafleet.adapter_digest import adapter_digest

from tests.sdk.conftest import CPU_INSTANCE


def _adapter_folder(root: Path, name: str, weights: bytes) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def _create(client: Client, name: str, **overrides) -> lorafleet.InferenceEndpoint:  # type: ignore[no-untyped-def]
    spec = {**CPU_INSTANCE, "repository": "org/tiny-model", "task": "text-generation", **overrides}
    return lorafleet.create_inference_endpoint(name, client=client, **spec)


def test_sync_methods_list_add_replace_and_remove(static_cp, static_client, endpoint_name):
    endpoint = _create(static_client, endpoint_name(static_cp), env={"LORA_ADAPTERS": "seed=org/seed@v1"})
    (seed,) = endpoint.adapters
    assert isinstance(seed, EndpointAdapter)
    assert (seed.name, seed.source, seed.revision, seed.state, seed.ready_replicas) == (
        "seed",
        "org/seed",
        "v1",
        "pending",
        0,
    )
    folder = _adapter_folder(static_cp.local_models, "sdk-one", b"one")
    added = endpoint.add_adapter("team/one", str(folder))
    assert added.name == "team/one" and added.digest == adapter_digest(folder) and added.revision is None
    _adapter_folder(static_cp.local_models, "sdk-one", b"two")  # new files: a new version
    assert endpoint.add_adapter("team/one", str(folder)).digest == adapter_digest(folder) != added.digest
    assert endpoint.add_adapter("hub", "org/hub", revision="main").revision == "main"
    assert [a.name for a in endpoint.list_adapters()] == ["hub", "seed", "team/one"]
    endpoint.remove_adapter("seed")
    assert [a.name for a in endpoint.adapters] == ["hub", "team/one"]
    with pytest.raises(lorafleet.EndpointNotFound, match="seed"):
        endpoint.remove_adapter("seed")
    with pytest.raises(lorafleet.ValidationError, match="LOCAL_ROOTS"):
        endpoint.add_adapter("x", "/etc")
    with pytest.raises(ValueError, match=r"\.\."):
        endpoint.add_adapter("../x", "org/x")
    assert endpoint.fetch().status == "pending"  # the set changed, the endpoint did not


async def test_async_methods_mirror_the_sync_ones(static_cp, endpoint_name):
    name = endpoint_name(static_cp)
    async with AsyncClient(static_cp.url, static_cp.token) as client:
        spec = {**CPU_INSTANCE, "repository": "org/tiny-model"}
        endpoint = await aio.create_inference_endpoint(name, client=client, **spec)
        assert await endpoint.adapters == []
        added = await endpoint.add_adapter("a", "org/a", revision="v2")
        assert (added.name, added.source, added.revision) == ("a", "org/a", "v2")
        assert [a.name for a in await endpoint.list_adapters()] == ["a"]
        await endpoint.remove_adapter("a")
        assert await endpoint.adapters == []
        with pytest.raises(lorafleet.EndpointNotFound):
            await endpoint.remove_adapter("a")


def test_another_namespace_cannot_see_or_change_the_adapters(static_cp, static_client, endpoint_name):
    name = endpoint_name(static_cp)
    _create(static_client, name).add_adapter("a", "org/a")
    token = static_cp.create_token("mallory")
    with Client(static_cp.url, token) as other:
        with pytest.raises(lorafleet.EndpointNotFound):
            lorafleet.get_inference_endpoint(name, namespace="alice", token=token, client=other)
        foreign = lorafleet.InferenceEndpoint.from_raw(
            lorafleet.get_inference_endpoint(name, client=static_client).raw,
            "alice",
            token=token,
            client=other,
        )
        for call in (
            lambda: foreign.adapters,
            lambda: foreign.add_adapter("b", "org/b"),
            lambda: foreign.remove_adapter("a"),
        ):
            with pytest.raises(lorafleet.EndpointNotFound):
                call()
    assert [a.name for a in lorafleet.get_inference_endpoint(name, client=static_client).adapters] == ["a"]


def test_cli_adapters_list_add_remove(static_cp, static_client, endpoint_name, capsys):
    name = endpoint_name(static_cp)
    _create(static_client, name)

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["endpoints", "adapters", *args, "--url", static_cp.url, "--token", static_cp.token])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("list", name)[:2] == (0, "No adapters.\n")
    code, out, _ = run("add", name, "org/support", "org/support", "--revision", "v3")
    assert code == 0 and out.startswith("ADAPTER") and "org/support" in out and "0/0" in out
    code, out, _ = run("list", name, "-o", "json")
    (item,) = json.loads(out)
    assert code == 0 and (item["name"], item["revision"], item["state"]) == ("org/support", "v3", "pending")
    code, out, _ = run("remove", name, "org/support")
    assert code == 0 and out == f"Removed adapter org/support from endpoint alice/{name}.\n"
    code, _, err = run("remove", name, "org/support")
    assert code == 1 and "org/support" in err
    code, _, err = run("add", name, "bad", "/etc/passwd")
    assert code == 1 and "LOCAL_ROOTS" in err
