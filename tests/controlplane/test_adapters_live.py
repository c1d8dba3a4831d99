"""Live adapters on REAL replicas (issue 15): the reconciler converges a running 2-replica endpoint
to its adapter set through the replicas' admin API, without restarting them; answers equal
transformers + peft for the set's files on every replica; the set survives pause/resume and a
control-plane restart; an adapter replaced under load answers as the old or the new version,
never a mix."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controlplane.conftest import BACKENDS
from tests.controlplane.live import LiveControlPlane
from tests.controlplane.replicas import (
    ADAPTER_ID,
    EndpointView,
    api_key_of,
    endpoint,
    environ,
    handles,
    real_body,
    real_controlplane,
    wait_for,
)
from tests.fixtures import standard_adapters, tiny_model
from tests.runtime.oracle import oracle_greedy

pytestmark = pytest.mark.slow
ARCH = "mistral"
TOKENS = 6
PROMPT = "Hello there, general"


@pytest.fixture(scope="module", params=BACKENDS)
def cp(request: pytest.FixtureRequest) -> Iterator[LiveControlPlane]:
    with real_controlplane(request.param) as live:
        yield live


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    """The fixture adapters (under the control plane's LOCAL_ROOTS), by their oracle names."""
    return standard_adapters(tiny_model(ARCH))


def two_replicas(name: str, adapter: Path) -> dict[str, Any]:
    body = real_body(name, adapter)
    body["compute"]["scaling"].update(minReplica=2, maxReplica=2)  # type: ignore[index]
    return body


def generate(url: str, token: str, adapter: str | None, prompt: str = PROMPT) -> httpx.Response:
    parameters: dict[str, Any] = {
        "max_new_tokens": TOKENS,
        "details": True,
        "decoder_input_details": True,
        "ignore_eos": True,
    }
    if adapter:
        parameters["adapter_id"] = adapter
    return httpx.post(
        f"{url}/generate",
        json={"inputs": prompt, "parameters": parameters},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def answer(response: httpx.Response) -> tuple[list[int], list[int]]:
    """(prompt ids, generated ids) of a `/generate` answer with details."""
    assert response.status_code == 200, response.text
    details = response.json()["details"]
    return [t["id"] for t in details["prefill"]], [t["id"] for t in details["tokens"]]


def expected(prompt_ids: list[int], oracle_name: str) -> list[int]:
    return oracle_greedy(ARCH, prompt_ids, oracle_name, TOKENS)


def adapters(ep: EndpointView) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{ep.path}/adapters", headers=ep.cp.headers, timeout=30)
    response.raise_for_status()
    return {item["name"]: item for item in response.json()["items"]}


def put(ep: EndpointView, name: str, source: Path | str) -> dict[str, Any]:
    response = httpx.put(
        f"{ep.path}/adapters/{name}", json={"source": str(source)}, headers=ep.cp.headers, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_set(ep: EndpointView, wanted: dict[str, str | None], replicas: int = 2) -> dict[str, dict[str, Any]]:
    """Waits until the set is exactly `wanted` (name → digest, None: any) and each is ready on
    `replicas` replicas."""

    def converged() -> dict[str, dict[str, Any]] | None:
        found = adapters(ep)
        if set(found) != set(wanted):
            return None
        for name, digest in wanted.items():
            item = found[name]
            if (
                item["state"] != "ready"
                or item["readyReplicas"] != replicas
                or (digest and item["digest"] != digest)
            ):
                return None
        return found

    return wait_for(converged, 120, f"adapters {wanted} ready on {replicas} replicas (last: {adapters(ep)})")


def replica_answers_match(ep: EndpointView, oracle_for: dict[str, str]) -> None:
    """Every replica, called directly with its own key, answers each adapter as its oracle files."""
    urls = ep.replica_urls()
    assert len(urls) == 2
    for url in urls.values():
        key = api_key_of(ep.cp, url)
        for name, oracle_name in oracle_for.items():
            prompt_ids, tokens = answer(generate(url, key, name))
            assert tokens == expected(prompt_ids, oracle_name), f"{name} on {url}"


def test_add_replace_remove_on_a_live_two_replica_endpoint_without_restarts(
    cp: LiveControlPlane, files: dict[str, Path]
) -> None:
    bad = cp.local_models / "broken"
    bad.mkdir(exist_ok=True)
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["nope"]}')
    (bad / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with endpoint(cp, two_replicas("ep-live", files["r8-qv"])) as ep:
        ep.wait_running()
        wait_for(lambda: len(ep.pids()) == 2 and ep.get()["status"]["readyReplica"] == 2, 180, "2 ready")
        pids = ep.pids()
        revision = ep.get()["revision"]
        wait_set(ep, {ADAPTER_ID: None})
        # Add one; replace the seed's one with other files; a bad checkpoint fails on its own.
        put(ep, "coder", files["r16-all"])
        replaced = put(ep, ADAPTER_ID, files["r64-rslora"])
        put(ep, "broken", bad)
        wait_for(lambda: adapters(ep)["broken"]["state"] == "failed", 120, "broken adapter failed")
        assert "replica rep-" in adapters(ep)["broken"]["message"]
        httpx.delete(f"{ep.path}/adapters/broken", headers=cp.headers, timeout=30).raise_for_status()
        wait_set(ep, {ADAPTER_ID: replaced["digest"], "coder": None})
        support_oracle = "r64-rslora"
        for handle in handles(cp):  # a sandbox shows only launch-time folders: added ones are copies
            if handle["replica_key"] in pids and handle["isolation"].startswith("sandbox"):
                assert len(list((Path(handle["folder"]) / "adapters").iterdir())) == 3  # 3 added
        replica_answers_match(ep, {ADAPTER_ID: support_oracle, "coder": "r16-all"})
        url = ep.get()["status"]["url"]
        prompt_ids, tokens = answer(generate(url, cp.token, "coder"))  # through the gateway too
        assert tokens == expected(prompt_ids, "r16-all")
        # Remove one: every replica and the gateway refuse it.
        httpx.delete(f"{ep.path}/adapters/coder", headers=cp.headers, timeout=30).raise_for_status()
        wait_set(ep, {ADAPTER_ID: replaced["digest"]})
        for replica_url in ep.replica_urls().values():
            refused = generate(replica_url, api_key_of(cp, replica_url), "coder")
            assert 400 <= refused.status_code < 500, refused.text
        wait_for(
            lambda: 400 <= generate(url, cp.token, "coder").status_code < 500, 60, "gateway refuses coder"
        )
        # No replica was restarted and the spec did not change.
        assert ep.pids() == pids and ep.get()["revision"] == revision
        assert not [e for e in ep.events() if e["kind"] == "replica-failed"]
        # Pause and resume: new replicas start with the current set, not the seed's.
        ep.post("pause")
        wait_for(lambda: ep.pids() == {}, 120, "replicas stopped")
        ep.post("resume")
        ep.wait_running()
        wait_for(
            lambda: len(ep.pids()) == 2 and ep.get()["status"]["readyReplica"] == 2, 180, "2 ready again"
        )
        wait_set(ep, {ADAPTER_ID: replaced["digest"]})
        for pid in ep.pids().values():
            assert environ(pid)["LORA_ADAPTERS"] == f"{ADAPTER_ID}={files[support_oracle]}"
        replica_answers_match(ep, {ADAPTER_ID: support_oracle})
        # A control-plane restart: the same set, the same replicas (adopted), still converged.
        pids = ep.pids()
        cp.restart()
        cp.wait_passes(3)
        assert ep.pids() == pids
        wait_set(ep, {ADAPTER_ID: replaced["digest"]})
        put(ep, "coder", files["r16-all"])  # and it still converges live afterwards
        wait_set(ep, {ADAPTER_ID: replaced["digest"], "coder": None})
        replica_answers_match(ep, {ADAPTER_ID: support_oracle, "coder": "r16-all"})
        assert ep.pids() == pids


def test_replacing_an_adapter_under_load_answers_old_or_new_never_a_mix(
    cp: LiveControlPlane, files: dict[str, Path]
) -> None:
    """Every answer is the old or the new version; every request sent once the control plane
    reports the new version ready on both replicas answers as the new one.

    Requests are classified by when they were *sent*, not by where their answer lands in the
    list: a request sent before the swap may finish after requests sent later (queued on a busier
    replica, or waiting for its old version to be placed again), and may answer as either version."""
    prompts = [f"{PROMPT} {i}" for i in range(6)]
    with endpoint(cp, two_replicas("ep-swap", files["r8-qv"])) as ep:
        url = ep.wait_running()["status"]["url"]
        wait_for(lambda: ep.get()["status"]["readyReplica"] == 2, 180, "2 ready")
        wait_set(ep, {ADAPTER_ID: None})
        answers: list[tuple[bool, tuple[list[int], list[int]]]] = []  # (sent after the swap, answer)
        swapped, stop = threading.Event(), threading.Event()
        failures: list[Exception] = []

        def load() -> None:
            index = 0
            try:
                while not stop.is_set():
                    sent_after = swapped.is_set()  # read before the request leaves
                    response = generate(url, cp.token, ADAPTER_ID, prompts[index % len(prompts)])
                    answers.append((sent_after, answer(response)))
                    index += 1
            except Exception as e:  # a refused request fails the test, not just this thread
                failures.append(e)

        def sent_after_swap() -> int:
            return sum(1 for after, _ in answers if after)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(answers) >= 6 or failures, 120, "answers before the replacement")
            assert not failures, failures[0]
            new = put(ep, ADAPTER_ID, files["r16-all"])
            wait_set(ep, {ADAPTER_ID: new["digest"]})
            swapped.set()
            wait_for(lambda: sent_after_swap() >= 6 or failures, 120, "answers after the replacement")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        assert not failures, failures[0]
        versions = []
        for sent_after, (prompt_ids, tokens) in answers:
            old, fresh = expected(prompt_ids, "r8-qv"), expected(prompt_ids, "r16-all")
            assert old != fresh
            assert tokens in (old, fresh), "an answer mixed two versions of the adapter"
            versions.append((sent_after, "old" if tokens == old else "new"))
        assert versions[0] == (False, "old")
        late = [version for sent_after, version in versions if sent_after]
        assert len(late) >= 6 and set(late) == {"new"}, f"sent after the swap was ready: {late}"
