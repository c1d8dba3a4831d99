"""wait() and the seed article's workflow on real runtime replicas started by a real control plane."""

from __future__ import annotations

import json

import lorafleet
import pytest
from lorafleet import cli

from tests.controlplane.replicas import wait_for
from tests.fixtures import standard_adapters, tiny_model
from tests.sdk.conftest import CPU_INSTANCE


@pytest.fixture(autouse=True)
def _inference_client_online(monkeypatch):
    # huggingface_hub's InferenceClient refuses every request under HF_HUB_OFFLINE, localhost included.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def test_wait_times_out_then_reports_the_failed_replicas_log(live_cp, live_client, endpoint_name):
    missing = str(live_cp.local_models / "nonexistent-model-dir")  # allowed by LOCAL_ROOTS, but not there
    endpoint = lorafleet.create_inference_endpoint(
        endpoint_name(live_cp), repository=missing, client=live_client, **CPU_INSTANCE
    )
    with pytest.raises(lorafleet.Timeout, match="it is '(pending|initializing)'"):
        endpoint.wait(timeout=0.2, refresh_every=0.1)
    with pytest.raises(lorafleet.EndpointFailed, match="failed to deploy") as info:
        endpoint.wait(timeout=120, refresh_every=0.5)
    assert endpoint.status == "failed"
    assert missing in info.value.message and "no such directory" in info.value.message


def _seed_custom_image(adapters: dict) -> dict:
    # The article's payload, with our adapters mapped to local folders (no Hub here), and token
    # limits that fit the tiny test model's 512 positions.
    lora = f"customer_support={adapters['r8-qv']},magicoder={adapters['r16-all']}"
    return {
        "health_route": "/health",
        "url": "ghcr.io/huggingface/text-generation-inference:2.1.1",
        "env": {"LORA_ADAPTERS": lora, "MAX_BATCH_PREFILL_TOKENS": "256", "MAX_INPUT_LENGTH": "128",
                "MAX_TOTAL_TOKENS": "192", "MODEL_ID": "/repository"},
    }  # fmt: skip


@pytest.mark.slow
def test_seed_article_snippet_deploys_and_serves_adapters(live_cp, endpoint_name, monkeypatch, capsys):
    monkeypatch.setenv("LORAFLEET_URL", live_cp.url)
    monkeypatch.setenv("LORAFLEET_TOKEN", live_cp.token)
    model_dir = tiny_model("mistral")
    custom_image = _seed_custom_image(standard_adapters(model_dir))
    name = endpoint_name(live_cp, "mistral-7b-multi-lora")

    # --- the article's code, with `lorafleet` for `huggingface_hub` ---
    from lorafleet import create_inference_endpoint

    endpoint = create_inference_endpoint(
        name=name,
        repository=str(model_dir),
        framework="pytorch",
        accelerator="gpu",
        instance_size="x1",
        instance_type="nvidia-l4",
        region="us-east-1",
        vendor="aws",
        min_replica=1,
        max_replica=1,
        task="text-generation",
        custom_image=custom_image,
    )
    endpoint.wait(timeout=240, refresh_every=0.5)
    # --- end of the article's code ---

    assert endpoint.status == "running"
    assert endpoint.url == f"{live_cp.url}/endpoints/{endpoint.namespace}/{name}"  # the gateway's URL
    outputs = {
        adapter: endpoint.client.text_generation(
            prompt="Hello who are you?", max_new_tokens=8, adapter_id=adapter, seed=0
        )
        for adapter in ("customer_support", "magicoder", None)
    }
    assert all(isinstance(text, str) for text in outputs.values())
    assert len(set(outputs.values())) > 1, outputs  # the adapters change the output

    def metered() -> lorafleet.EndpointUsage | None:  # gateways and the reconciler write every few s
        usage = endpoint.usage()
        by_name = {a.adapter: a for a in usage.adapters}
        done = set(by_name) == {None, "customer_support", "magicoder"} and all(
            a.requests == 1 and a.output_tokens == 8 for a in by_name.values())
        return usage if done else None

    usage = wait_for(metered, 60, "the three requests metered")
    assert all(a.input_tokens > 0 and a.errors == 0 and a.latency_p50_ms for a in usage.adapters)
    assert cli.main(["endpoints", "usage", name]) == 0
    table = capsys.readouterr().out
    assert "customer_support" in table and "(base model)" in table and "OUTPUT TOKENS" in table

    assert endpoint.resume().status == "running"  # running_ok
    with pytest.raises(lorafleet.ValidationError, match="already running"):
        endpoint.resume(running_ok=False)
    assert "ready" in endpoint.logs(tail=50)

    assert cli.main(["endpoints", "wait", name, "--timeout", "60", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"]["state"] == "running"

    assert endpoint.pause().url is None
    endpoint.delete()


@pytest.mark.slow
async def test_async_functions_deploy_wait_and_serve(live_cp, endpoint_name):
    from lorafleet import AsyncClient, aio

    model_dir = tiny_model("mistral")
    adapters = standard_adapters(model_dir)
    name = endpoint_name(live_cp, "async")
    async with AsyncClient(live_cp.url, live_cp.token) as client:
        endpoint = await aio.create_inference_endpoint(
            name, repository=str(model_dir), env={"LORA_ADAPTERS": f"qv={adapters['r8-qv']}"},
            client=client, **CPU_INSTANCE,
        )  # fmt: skip
        assert isinstance(endpoint, lorafleet.AsyncInferenceEndpoint) and endpoint.status == "pending"
        with pytest.raises(lorafleet.Conflict):
            await aio.create_inference_endpoint(name, repository="org/other", client=client, **CPU_INSTANCE)
        await endpoint.wait(timeout=240, refresh_every=0.5)
        text = await endpoint.async_client.text_generation("Hello", max_new_tokens=4, adapter_id="qv")
        assert isinstance(text, str)
        usage = await endpoint.usage()
        assert isinstance(usage, lorafleet.EndpointUsage) and usage.since == endpoint.created_at
        assert name in [e.name for e in await aio.list_inference_endpoints(client=client)]
        assert (await aio.get_inference_endpoint(name, client=client)).status == "running"
        assert (await aio.resume_inference_endpoint(name, client=client)).status == "running"
        assert (await aio.update_inference_endpoint(name, max_replica=1, client=client)).name == name
        assert (await aio.scale_to_zero_inference_endpoint(name, client=client)).status == "scaledToZero"
        assert (await aio.pause_inference_endpoint(name, client=client)).status == "paused"
        assert isinstance(await endpoint.logs(), str)
        await aio.delete_inference_endpoint(name, client=client)
        with pytest.raises(lorafleet.EndpointNotFound):
            await endpoint.fetch()
