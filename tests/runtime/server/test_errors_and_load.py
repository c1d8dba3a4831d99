"""Errors as TGI returns them, 50 concurrent mixed-adapter requests, disconnects, `/metrics`."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError as HubValidationError
from lorafleet.runtime.engine import GenerationRequest, SamplingParams

from tests.runtime.hub_cache import put_in_hub_cache
from tests.runtime.server.conftest import RunningServer, adapter_flag, run_server

ADAPTER_IDS = [None, "r8-qv", "r16-all", "r64-rslora", "r8-mlp-patterns"]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The replica's (offline) Hub cache: tests add repos to it while the server runs."""
    return tmp_path_factory.mktemp("hub-cache")


@pytest.fixture(scope="module")
def server(
    model_dir: Path, adapters: dict[str, Path], hub_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The standard replica, with Hub adapters allowed (read from `hub_cache`, offline)."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--model-id", str(model_dir), "--lora-adapters", adapter_flag(adapters), "--allow-hub-adapters"]
    with run_server(args, log_path, env={"HF_HUB_CACHE": str(hub_cache)}) as running:
        yield running


def post(server, path: str, body: object) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"adapter_id": "no-such-adapter"}, "no-such-adapter"),
        ({"max_new_tokens": 100_000}, "must be <="),
        ({"temperature": 0}, "`temperature`"),
        ({"top_p": 1.5}, "`top_p`"),
        ({"top_k": -1}, "`top_k`"),
        ({"repetition_penalty": 0}, "`repetition_penalty`"),
        ({"frequency_penalty": 3}, "`frequency_penalty`"),
        ({"top_n_tokens": 9}, "`top_n_tokens`"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop`"),
        ({"truncate": 100_000}, "`truncate`"),
        ({"max_new_tokens": "many"}, "max_new_tokens"),
    ],
)
def test_bad_requests_are_422_validation_errors(server, parameters, fragment):
    for path in ("/generate", "/generate_stream", "/"):
        response = post(server, path, {"inputs": "hello", "parameters": parameters})
        assert response.status_code == 422, (path, response.text)
        body = response.json()
        assert body["error_type"] == "validation"
        assert fragment in body["error"]


def test_input_longer_than_max_input_tokens_is_refused(server):
    info = httpx.get(f"{server.url}/info", timeout=30).json()
    response = post(server, "/generate", {"inputs": "a b " * info["max_total_tokens"]})
    assert response.status_code == 422
    assert "`inputs` tokens must be at most" in response.json()["error"]


def test_malformed_bodies_are_422(server):
    response = httpx.post(
        f"{server.url}/generate",
        content=b"{not json",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422 and response.json()["error_type"] == "validation"
    assert post(server, "/generate", {"parameters": {}}).status_code == 422  # no inputs
    assert (
        post(
            server, "/generate_stream", {"inputs": "x", "parameters": {"decoder_input_details": True}}
        ).status_code
        == 422
    )


def test_huggingface_hub_raises_its_typed_validation_error(server):
    with pytest.raises(HubValidationError, match="no-such-adapter"):
        InferenceClient(server.url).text_generation("hi", max_new_tokens=2, adapter_id="no-such-adapter")


def test_a_broken_adapter_fails_alone_while_good_requests_succeed(server, adapters, hub_cache, tmp_path):
    broken = tmp_path / "broken-adapter"
    shutil.copytree(adapters["r8-qv"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    put_in_hub_cache(hub_cache, "acme/broken", broken)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            bodies = [
                {"inputs": f"story {i}", "parameters": {"max_new_tokens": 4, "adapter_id": a}}
                for i, a in enumerate(["acme/broken", "r8-qv", None, "acme/broken", "r16-all"])
            ]
            return await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))

    statuses = [r.status_code for r in asyncio.run(run())]
    assert statuses == [422, 200, 200, 422, 200]


def test_a_hub_adapter_not_preloaded_is_loaded_on_first_use(server, model_dir, hub_cache):
    from tests.fixtures import AdapterSpec, tiny_adapter

    fresh = tiny_adapter(model_dir, AdapterSpec(r=4, target_modules=("q_proj", "o_proj"), seed=77))
    put_in_hub_cache(hub_cache, "acme/fresh", fresh)
    loads_before = server.metric("lorafleet_adapter_loads_total")
    response = post(
        server, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_id": "acme/fresh"}}
    )
    assert response.status_code == 200, response.text
    assert server.metric("lorafleet_adapter_loads_total") >= loads_before + 1
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    assert "acme/fresh" in {m["id"] for m in models}


def test_fifty_concurrent_mixed_adapter_requests_all_match_the_engine(server, engine):
    requests = [
        GenerationRequest(
            f"Request number {i} says", SamplingParams(max_new_tokens=6), adapter_id=ADAPTER_IDS[i % 5]
        )
        for i in range(50)
    ]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/generate",
                        json={
                            "inputs": r.prompt,
                            "parameters": {"max_new_tokens": 6, "adapter_id": r.adapter_id, "details": True},
                        },
                    )
                    for r in requests
                )
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 50
    expected = engine.generate(requests)
    got = [[t["id"] for t in r.json()["details"]["tokens"]] for r in responses]
    assert got == [[t.id for t in e.tokens] for e in expected]


def _wait_for(condition, what: str, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Polls `condition`; the timeout only bounds a hang, it is never part of what is tested."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# Disconnect tests: a request of nearly max_total_tokens ignore_eos tokens is dropped as soon as it
# is seen in flight. Nothing depends on how fast the machine is: an attempt where the request still
# managed to finish before the client left ends "ok", is recognised as inconclusive and retried.
LONG_TOKENS = 480  # of the server's default max_total_tokens (512), minus room for the prompt
ATTEMPTS = 3


def _outcomes(server, adapter: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    return tuple(  # type: ignore[return-value]
        server.metric("lorafleet_requests_total", f'adapter="{adapter}",outcome="{o}"')
        for o in ("cancelled", "ok")
    )


def _check_cancelled_and_freed(server, adapter: str, before: tuple[float, float]) -> bool:  # type: ignore[no-untyped-def]
    """Waits for the dropped request to end; False when it finished before the client left."""
    total = server.metric("lorafleet_kv_total_blocks")
    _wait_for(lambda: server.metric("lorafleet_requests_in_flight") == 0, "the request to end")
    _wait_for(lambda: sum(_outcomes(server, adapter)) > sum(before), "the request to be counted")
    cancelled, ok = _outcomes(server, adapter)
    if ok > before[1] and cancelled == before[0]:
        return False
    assert (cancelled, ok) == (before[0] + 1, before[1])
    _wait_for(lambda: server.metric("lorafleet_kv_free_blocks") == total, "the blocks to be freed")
    assert server.metric("lorafleet_batch_size") == 0  # read with the free blocks: no stale batch
    return True


def test_a_client_disconnect_mid_stream_cancels_the_request_and_frees_its_blocks(server):
    total = server.metric("lorafleet_kv_total_blocks")
    _wait_for(lambda: server.metric("lorafleet_kv_free_blocks") == total, "an idle engine")
    body = {
        "inputs": "Tell me a long story",
        "parameters": {"max_new_tokens": LONG_TOKENS, "ignore_eos": True, "adapter_id": "r16-all"},
    }
    for _ in range(ATTEMPTS):
        before = _outcomes(server, "r16-all")
        with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as response:
            first = next(line for line in response.iter_lines() if line)
            assert first.startswith("data: ") and '"token"' in first
        if _check_cancelled_and_freed(server, "r16-all", before):
            break
    else:
        pytest.fail(f"{LONG_TOKENS} tokens finished before the client could leave, {ATTEMPTS} times")
    assert server.metric("lorafleet_requests_in_flight") == 0


def test_a_client_disconnect_during_a_non_streaming_request_cancels_it(server):
    body = json.dumps(
        {"inputs": "Tell me another story", "parameters": {"max_new_tokens": LONG_TOKENS, "ignore_eos": True}}
    )
    host, port = server.url.removeprefix("http://").split(":")
    raw = (
        f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    for _ in range(ATTEMPTS):
        before = _outcomes(server, "__base__")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(raw)
            _wait_for(lambda: server.metric("lorafleet_requests_in_flight") >= 1, "the request to run", 30)
        # closed without reading the answer
        if _check_cancelled_and_freed(server, "__base__", before):
            return
    pytest.fail(f"{LONG_TOKENS} tokens finished before the client could leave, {ATTEMPTS} times")


def test_metrics_expose_queue_batch_throughput_adapters_and_latencies(server):
    post(
        server, "/generate", {"inputs": "metrics", "parameters": {"max_new_tokens": 3, "adapter_id": "r8-qv"}}
    )
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for name in (
        "lorafleet_queue_size",
        "tgi_queue_size",
        "lorafleet_batch_size",
        "lorafleet_kv_free_blocks",
        "lorafleet_generated_tokens_per_second",
        "lorafleet_adapter_loads_total",
        "lorafleet_adapter_evictions_total",
        "lorafleet_time_to_first_token_seconds_bucket",
        "lorafleet_time_per_output_token_seconds_bucket",
        "lorafleet_request_duration_seconds_count",
        "lorafleet_loaded_adapters",
        "lorafleet_ready 1.0",
    ):
        assert name in text, name
    assert server.metric("lorafleet_requests_total", 'adapter="r8-qv",outcome="ok"') >= 1
    assert server.metric("lorafleet_generated_tokens_total", 'adapter="r8-qv"') >= 3
    assert server.metric("lorafleet_request_failures_total", 'error_type="validation"') >= 1


def test_a_repeated_long_prompt_shows_up_in_the_prefix_cache_metrics(server):
    prompt = "the same long system prompt, " * 12
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 2, "adapter_id": "r16-all"}}
    queried = server.metric("lorafleet_prefix_cache_queries_tokens_total")
    hits = server.metric("lorafleet_prefix_cache_hit_tokens_total")
    post(server, "/generate", body)
    post(server, "/generate", body)
    assert server.metric("lorafleet_prefix_cache_queries_tokens_total") > queried
    assert server.metric("lorafleet_prefix_cache_hit_tokens_total") >= hits + 16  # at least one block reused
