"""The gateway in front of REAL replicas (`python -m lorafleet.runtime` on the tiny Mistral fixture,
two adapters), started by a live control plane: one endpoint of two replicas behind one URL, used
by the real clients (huggingface_hub's InferenceClient, openai, text-generation).

The module shares one endpoint (two replicas cost about ten seconds of CPU to start); each test
measures what it changes (usage, counters) as a difference. Failover, rolling updates and scale to
zero have their own module (test_gateway_failover.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.controlplane.live import REPO_ROOT, LiveControlPlane, free_port
from tests.controlplane.replicas import (
    EndpointView,
    api_key_of,
    endpoint,
    real_body,
    real_controlplane,
    wait_for,
)
from tests.fixtures import standard_adapters, tiny_model

pytestmark = pytest.mark.slow
PROMPT = "Hello there"
ADAPTERS = ("support", "coder")


@pytest.fixture(autouse=True)
def _inference_client_online(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub's InferenceClient refuses every request under HF_HUB_OFFLINE, localhost included.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def cp() -> Iterator[LiveControlPlane]:
    with real_controlplane() as live:
        yield live


@pytest.fixture(scope="module")
def two(cp: LiveControlPlane) -> Iterator[EndpointView]:
    """One endpoint, two replicas, adapters `support` and `coder`."""
    adapters = standard_adapters(tiny_model("mistral"))
    lora = f"support={adapters['r8-qv']},coder={adapters['r16-all']}"
    body = real_body("ep-two", MAX_INPUT_LENGTH="64", MAX_TOTAL_TOKENS="480", LORA_ADAPTERS=lora)
    body["compute"]["scaling"] = {"minReplica": 2, "maxReplica": 2}  # type: ignore[index]
    with endpoint(cp, body) as view:
        wait_for(lambda: view.get()["status"]["readyReplica"] == 2, 180, "two ready replicas")
        view.wait_running()
        yield view


def url_of(view: EndpointView) -> str:
    return view.get()["status"]["url"]


def replicas(cp: LiveControlPlane, view: EndpointView) -> dict[str, tuple[str, dict[str, str]]]:
    """replica key → (its own URL, headers with its own key)."""
    return {key: (url, {"Authorization": f"Bearer {api_key_of(cp, url)}"})
            for key, url in view.replica_urls().items()}


def served(url: str, headers: dict[str, str]) -> dict[str, float]:
    """adapter label → requests the replica finished (`lorafleet_requests_total`)."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=30).text.splitlines():
        match = re.match(r'lorafleet_requests_total\{adapter="([^"]*)",outcome="[^"]*"\} (\S+)', line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(2))
    return counts


def gauge(url: str, headers: dict[str, str], name: str) -> float:
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the replica's /metrics")


def concurrently(count: int, job: Any) -> list[Any]:
    results: list[Any] = [None] * count
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, job(i))) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


def stream_tgi(url: str, headers: dict[str, str], adapter: str | None, max_new_tokens: int
               ) -> dict[str, Any]:
    """A `/generate_stream` through `url`; the last event (details: input_length, generated_tokens)."""
    parameters: dict[str, Any] = {"max_new_tokens": max_new_tokens, "details": True}
    if adapter:
        parameters["adapter_id"] = adapter
    last: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/generate_stream", json={"inputs": PROMPT, "parameters": parameters},
                      headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                last = json.loads(line[5:])
    return last


def test_two_replicas_behind_one_url_both_receive_traffic(cp: LiveControlPlane, two: EndpointView) -> None:
    url, own = url_of(two), replicas(cp, two)
    before = {key: sum(served(*own[key]).values()) for key in own}
    results = concurrently(8, lambda i: stream_tgi(url, cp.headers, None, 24))
    assert all(r["details"]["generated_tokens"] == 24 for r in results)
    after = {key: sum(served(*own[key]).values()) for key in own}
    assert all(after[key] > before[key] for key in own), (before, after)
    assert sum(after.values()) - sum(before.values()) == 8


def direct(cp: LiveControlPlane, two: EndpointView, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """The same request sent straight to one replica with its key (the reference)."""
    url, headers = next(iter(replicas(cp, two).values()))
    response = httpx.post(f"{url}{route}", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_real_clients_through_the_url_answer_token_for_token_as_a_replica(
    cp: LiveControlPlane, two: EndpointView
) -> None:
    from huggingface_hub import InferenceClient
    from openai import OpenAI
    from text_generation import Client as TgiClient

    url = url_of(two)
    for adapter in (None, "support"):
        parameters = {"max_new_tokens": 8, **({"adapter_id": adapter} if adapter else {})}
        reference = direct(cp, two, "/generate", {"inputs": PROMPT, "parameters": parameters})
        expected = reference["generated_text"]
        hub = InferenceClient(model=url, token=cp.token)
        assert hub.text_generation(PROMPT, max_new_tokens=8, adapter_id=adapter) == expected
        streamed = hub.text_generation(PROMPT, max_new_tokens=8, adapter_id=adapter, stream=True)
        assert "".join(streamed) == expected
    tgi = TgiClient(url, headers=cp.headers, timeout=60)
    base = direct(cp, two, "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}})
    base = base["generated_text"]
    assert tgi.generate(PROMPT, max_new_tokens=8).generated_text == base
    assert "".join(t.token.text for t in tgi.generate_stream(PROMPT, max_new_tokens=8)) == base

    messages = [{"role": "user", "content": PROMPT}]
    openai = OpenAI(base_url=f"{url}/v1", api_key=cp.token, max_retries=0)
    for model in ("tgi", "coder"):
        body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}
        expected = direct(cp, two, "/v1/chat/completions", body)["choices"][0]["message"]["content"]
        answer = openai.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        assert answer.choices[0].message.content == expected
        chunks = openai.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    completion = direct(cp, two, "/v1/completions", {"model": "support", "prompt": PROMPT, "max_tokens": 8,
                                                       "temperature": 0})["choices"][0]["text"]
    answer = openai.completions.create(model="support", prompt=PROMPT, max_tokens=8, temperature=0)
    assert answer.choices[0].text == completion
    chat = InferenceClient(model=url, token=cp.token).chat_completion(messages, max_tokens=8)
    assert isinstance(chat.choices[0].message.content, str)


def test_an_adapter_sticks_to_one_replica_until_the_bound_spills_it(
    cp: LiveControlPlane, two: EndpointView
) -> None:
    url, own = url_of(two), replicas(cp, two)
    before = {key: served(*own[key]).get("coder", 0.0) for key in own}
    for _ in range(6):  # one at a time: always under the bound, always the same replica
        two.generate(url, adapter_id="coder", max_new_tokens=2)
    middle = {key: served(*own[key]).get("coder", 0.0) for key in own}
    assert sorted(middle[key] - before[key] for key in own) == [0, 6], (before, middle)
    concurrently(8, lambda i: stream_tgi(url, cp.headers, "coder", 32))  # a hot adapter spills
    after = {key: served(*own[key]).get("coder", 0.0) for key in own}
    assert all(after[key] > middle[key] for key in own), (middle, after)


def test_public_protected_and_another_namespaces_token(cp: LiveControlPlane, two: EndpointView) -> None:
    url = url_of(two)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
    mallory = {"Authorization": f"Bearer {cp.create_token('mallory')}"}
    assert httpx.post(f"{url}/generate", json=body, headers=cp.headers, timeout=60).status_code == 200
    assert httpx.post(f"{url}/generate", json=body, timeout=60).status_code == 401
    assert httpx.post(f"{url}/generate", json=body, headers=mallory, timeout=60).status_code == 404
    try:
        httpx.put(two.path, json={"type": "public"}, headers=cp.headers, timeout=30).raise_for_status()
        wait_for(lambda: httpx.post(f"{url}/generate", json=body, timeout=60).status_code == 200, 30,
                 "the public endpoint answering without a token")
        assert httpx.post(f"{url}/generate", json=body, headers=mallory, timeout=60).status_code == 200
    finally:
        httpx.put(two.path, json={"type": "protected"}, headers=cp.headers, timeout=30).raise_for_status()
    wait_for(lambda: httpx.post(f"{url}/generate", json=body, timeout=60).status_code == 401, 30,
             "the protected endpoint refusing anonymous calls again")


def usage_of(cp: LiveControlPlane, view: EndpointView, adapter: str | None) -> dict[str, Any]:
    items = httpx.get(f"{view.path}/usage", headers=cp.headers, timeout=30).json()["adapters"]
    empty = {"requests": 0, "errors": 0, "inputTokens": 0, "outputTokens": 0}
    return next((a for a in items if a["adapter"] == adapter), empty)


def test_usage_counts_equal_what_was_sent(cp: LiveControlPlane, two: EndpointView) -> None:
    url = url_of(two)
    cp.wait_passes(4)  # earlier tests' tokens collected, their requests flushed: a settled baseline
    before = usage_of(cp, two, "support")
    finals = [stream_tgi(url, cp.headers, "support", n) for n in (3, 5, 7)]
    bad = {"inputs": PROMPT, "parameters": {"adapter_id": "support", "max_new_tokens": 0}}
    for _ in range(2):  # refused by the replica: requests and errors, no tokens
        assert httpx.post(f"{url}/generate", json=bad, headers=cp.headers, timeout=60).status_code == 422
    expected = {
        "requests": before["requests"] + 5,
        "errors": before["errors"] + 2,
        "inputTokens": before["inputTokens"] + sum(f["details"]["input_length"] for f in finals),
        "outputTokens": before["outputTokens"] + 3 + 5 + 7,
    }

    def counted() -> dict[str, Any] | None:
        now = usage_of(cp, two, "support")
        return now if all(now[k] == v for k, v in expected.items()) else None

    usage = wait_for(counted, 60, f"usage {expected} (last: {usage_of(cp, two, 'support')})")
    assert usage["ttftP50Ms"] > 0 and usage["latencyP99Ms"] >= usage["latencyP50Ms"] > 0
    metrics = httpx.get(f"{cp.url}/metrics", headers=cp.headers, timeout=30).text
    labels = f'namespace="{cp.namespace}",endpoint="ep-two",adapter="support"'
    assert f"lorafleet_gateway_requests_total{{{labels}}} {expected['requests']}" in metrics
    assert f"lorafleet_gateway_output_tokens_total{{{labels}}} {expected['outputTokens']}" in metrics


def test_requests_over_a_rate_limit_get_429_with_retry_after(cp: LiveControlPlane, two: EndpointView) -> None:
    url = url_of(two)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 1, "adapter_id": "support"}}

    def limited(limit: str) -> httpx.Response | None:
        answers = [httpx.post(f"{url}/generate", json=body, headers=cp.headers, timeout=60) for _ in range(3)]
        refused = [r for r in answers if r.status_code == 429]
        return refused[0] if refused and refused[0].json().get("limit") == limit else None

    try:
        limits = {"rateLimits": {"perAdapter": {"requestsPerSecond": 1}}}
        httpx.put(two.path, json=limits, headers=cp.headers, timeout=30).raise_for_status()
        refused = wait_for(lambda: limited("requestsPerSecond"), 30, "a 429 for requests per second")
        assert refused.json()["error_type"] == "rate_limited" and int(refused.headers["retry-after"]) >= 1
        assert "rateLimits.requestsPerSecond" in refused.json()["error"]
        limits = {"rateLimits": {"tokensPerMinute": 1}}
        httpx.put(two.path, json=limits, headers=cp.headers, timeout=30).raise_for_status()
        refused = wait_for(lambda: limited("tokensPerMinute"), 60, "a 429 for tokens per minute")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    finally:
        httpx.put(two.path, json={"rateLimits": {}}, headers=cp.headers, timeout=30).raise_for_status()
    free = lambda: httpx.post(f"{url}/generate", json=body, headers=cp.headers, timeout=60)  # noqa: E731
    wait_for(lambda: free().status_code == 200, 60, "no limit any more")


def outcomes(url: str, headers: dict[str, str], adapter: str) -> dict[str, float]:
    """outcome (ok, cancelled, error) → requests the replica finished for `adapter`."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=30).text.splitlines():
        match = re.match(rf'lorafleet_requests_total\{{adapter="{adapter}",outcome="([^"]*)"\}} (\S+)', line)
        if match:
            counts[match.group(1)] = float(match.group(2))
    return counts


def test_a_client_that_disconnects_mid_stream_frees_the_replicas_kv_blocks(
    cp: LiveControlPlane, two: EndpointView
) -> None:
    url, own = url_of(two), replicas(cp, two)
    before = {key: outcomes(*own[key], "support").get("cancelled", 0.0) for key in own}
    generated = {key: gauge(*own[key], "lorafleet_engine_generated_tokens_total") for key in own}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 470, "adapter_id": "support"}}
    stream = httpx.stream("POST", f"{url}/generate_stream", json=body, headers=cp.headers, timeout=120)
    with stream as response:  # one event, then the client hangs up
        assert next(line for line in response.iter_lines() if line.startswith("data:"))

    # The gateway closed its connection to the replica, which cancelled the request (its outcome
    # says so) well before its 470 tokens, and gave its KV blocks back.
    def cancelled_on() -> str | None:
        return next((k for k in own if outcomes(*own[k], "support").get("cancelled", 0.0) > before[k]), None)

    key = wait_for(cancelled_on, 30, "the request cancelled on its replica")
    replica_url, headers = own[key]
    in_flight = lambda: gauge(replica_url, headers, "lorafleet_requests_in_flight")  # noqa: E731
    wait_for(lambda: in_flight() == 0, 30, "nothing in flight")
    wait_for(lambda: gauge(replica_url, headers, "lorafleet_kv_free_blocks")
             == gauge(replica_url, headers, "lorafleet_kv_total_blocks"), 30, "every KV block free again")
    assert gauge(replica_url, headers, "lorafleet_engine_generated_tokens_total") - generated[key] < 470


def test_request_ids_pass_to_the_replica_and_back(cp: LiveControlPlane, two: EndpointView) -> None:
    url = url_of(two)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 1}}
    traced = {**cp.headers, "X-Request-Id": "req-7"}
    answer = httpx.post(f"{url}/generate", json=body, headers=traced, timeout=60)
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-7"
    assert "authorization" not in {k.lower() for k in answer.headers}
    refused = httpx.post(f"{url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": -1}},
                         headers=cp.headers, timeout=60)
    assert refused.status_code == 422 and refused.json()["error_type"] == "validation"  # the replica's own
    assert len(refused.headers["x-request-id"]) == 32
    # Neither the user's token nor a replica's key appears in the control plane's log.
    log = cp.output() + cp.log_path.read_text(errors="replace")
    keys = [api_key_of(cp, url) for url in two.replica_urls().values()]
    assert all(secret not in log for secret in (cp.token, *keys))


def test_a_gateway_alone_on_the_same_database_serves_the_endpoint(
    cp: LiveControlPlane, two: EndpointView
) -> None:
    """`lorafleet gateway serve`: stateless, only the database URL and the secret key; its usage
    adds up with the control plane's own gateway's."""
    port = free_port()
    log = (cp.home / "gateway.log").open("wb")
    command = [sys.executable, "-m", "lorafleet.cli", "gateway", "serve", "--port", str(port),
               "--log-level", "warning"]
    process = subprocess.Popen(command, env=cp.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/health"), 60, "the gateway process")
        before = usage_of(cp, two, None)["requests"]
        url = f"{base}/endpoints/{cp.namespace}/ep-two"
        assert httpx.get(f"{url}/health", headers=cp.headers, timeout=30).status_code == 200
        assert two.generate(url, adapter_id=None)
        assert httpx.post(f"{url}/generate", json={"inputs": PROMPT}, timeout=30).status_code == 401
        metrics = httpx.get(f"{base}/metrics", headers=cp.headers, timeout=30)
        assert metrics.status_code == 200 and 'endpoint="ep-two"' in metrics.text
        wait_for(lambda: usage_of(cp, two, None)["requests"] == before + 1, 30, "its usage in the database")
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
