"""A replica served with `--num-shard 2` (gloo, two real processes), driven over real HTTP by
`huggingface_hub.InferenceClient`: its outputs are the oracle's, `/info` reports the shards, the
adapter admin API works on both shards, a dead shard takes the replica down (503, then a
non-zero exit for the reconciler), and a model whose heads do not divide refuses to start."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from huggingface_hub import InferenceClient

from tests.runtime.oracle import oracle_greedy
from tests.runtime.server.conftest import RunningServer, adapter_flag, free_port, run_server

PROMPTS = {
    None: "The quick brown fox", "r8-qv": "SQL: SELECT", "r16-all": "Hello there", "r64-rslora": "Low-rank"
}


@pytest.fixture(scope="module")
def sharded(
    model_dir: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("sharded")
    env = {"API_KEY": f"replica-key-{secrets.token_hex(16)}", "NUM_SHARD": "2"}
    args = ["--model-id", str(model_dir), "--lora-adapters", adapter_flag(adapters)]
    args += ["--max-loaded-adapters", "6"]
    with run_server(args, folder / "stdout.log", env=env) as running:
        yield running


def _greedy(server: RunningServer, prompt: str, adapter: str | None, tokens: int = 10) -> list[int]:
    client = InferenceClient(server.url, token=server.api_key)
    out = client.text_generation(prompt, max_new_tokens=tokens, adapter_id=adapter, details=True,
                                 stop=[], decoder_input_details=True)
    assert out.details is not None and out.details.prefill is not None
    assert len(out.details.tokens) == tokens
    return [t.id for t in out.details.tokens]


def _prompt_ids(server: RunningServer, prompt: str) -> list[int]:
    client = InferenceClient(server.url, token=server.api_key)
    out = client.text_generation(prompt, max_new_tokens=1, details=True, decoder_input_details=True)
    assert out.details is not None
    return [t.id for t in out.details.prefill]


def test_a_two_shard_replica_answers_the_oracles_tokens_and_reports_its_shards(
    sharded: RunningServer,
) -> None:
    info = httpx.get(f"{sharded.url}/info", headers=sharded.headers, timeout=30)
    assert info.status_code == 200 and info.json()["num_shard"] == 2
    assert httpx.get(f"{sharded.url}/info", timeout=30).status_code == 401  # the key, shards or not
    for adapter, prompt in PROMPTS.items():
        ids = _prompt_ids(sharded, prompt)
        got = _greedy(sharded, prompt, adapter)
        expected = oracle_greedy("mistral", ids, adapter, len(got))
        assert got == expected, adapter


def test_the_admin_api_loads_and_unloads_adapters_on_every_shard(
    sharded: RunningServer, adapters: dict[str, Path]
) -> None:
    loaded = httpx.post(f"{sharded.url}/v1/load_lora_adapter", headers=sharded.headers, timeout=60,
                        json={"lora_name": "sql-v2", "lora_path": str(adapters["r8-mlp-patterns"])})
    assert loaded.status_code == 200
    ids = _prompt_ids(sharded, "Continuous batching")
    expected = oracle_greedy("mistral", ids, "r8-mlp-patterns", 10)  # the same files, another name
    assert _greedy(sharded, "Continuous batching", "sql-v2") == expected
    unloaded = httpx.post(f"{sharded.url}/v1/unload_lora_adapter", headers=sharded.headers, timeout=60,
                          json={"lora_name": "sql-v2"})
    assert unloaded.status_code == 200
    refused = httpx.post(f"{sharded.url}/generate", headers=sharded.headers, timeout=60,
                         json={"inputs": "Hi", "parameters": {"adapter_id": "sql-v2"}})
    assert refused.status_code == 422


def _workers(server: RunningServer) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children()
    return [c for c in children if any("spawn_main" in part for part in c.cmdline())]


def test_a_dead_shard_takes_the_replica_down_for_a_restart(model_dir: Path, tmp_path: Path) -> None:
    env = {"API_KEY": "k" * 32}
    with run_server(["--model-id", str(model_dir), "--num-shard", "2"], tmp_path / "log", env=env) as server:
        [worker] = _workers(server)
        worker.kill()
        statuses = []
        while server.process.poll() is None:
            try:
                statuses.append(httpx.get(f"{server.url}/health", timeout=5).status_code)
            except httpx.HTTPError:
                statuses.append(0)  # stopped listening: exiting
            time.sleep(0.05)
        assert server.process.returncode not in (0, None)
        assert 503 in statuses and 200 not in statuses[statuses.index(503):]
        assert "shard 1 exited" in server.log()


def test_heads_that_do_not_divide_refuse_to_start_naming_them(model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with log.open("w") as out:
        process = subprocess.run(
            [sys.executable, "-m", "lorafleet.runtime", "--hostname", "127.0.0.1", "--port", str(free_port()),
             "--model-id", str(model_dir), "--num-shard", "3"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=180,
        )
    assert process.returncode == 1
    assert "do not divide by 3" in log.read_text()
