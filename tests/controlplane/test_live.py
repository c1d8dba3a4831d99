"""The control plane as users run it: a server process, the CLI, restarts, the real runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.controlplane.conftest import FAKE_RUNTIME, SEED_CATALOG, endpoint_body
from tests.controlplane.live import LiveControlPlane, live_controlplane
from tests.controlplane.test_reconciler import wait_for
from tests.fixtures import standard_adapters, tiny_model

HERE = Path(__file__).parent


def _running(cp: LiveControlPlane, name: str = "ep-one") -> dict | None:
    raw = httpx.get(f"{cp.url}/v2/endpoint/{cp.namespace}/{name}", headers=cp.headers).json()
    return raw if raw["status"]["state"] == "running" else None


def _replica_pids(cp: LiveControlPlane) -> set[int]:
    return {json.loads(p.read_text())["pid"] for p in (cp.home / "replicas").glob("*.json")}


def test_cli_tokens_create_list_and_revoke() -> None:
    with live_controlplane(runtime_command=FAKE_RUNTIME, catalog=SEED_CATALOG) as cp:
        token = cp.create_token("carol")
        assert token.startswith("lf_")
        me = httpx.get(f"{cp.url}/api/whoami-v2", headers={"authorization": f"Bearer {token}"}).json()
        assert me["name"] == "carol"
        listing = cp.cli("list-tokens").stdout
        assert "carol" in listing and token not in listing
        prefix = token[:10]
        cp.cli("revoke-token", "--prefix", prefix)
        revoked = httpx.get(f"{cp.url}/api/whoami-v2", headers={"authorization": f"Bearer {token}"})
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(LORAFLEET_HOME=str(tmp_path), LORAFLEET_DATABASE_URL=f"sqlite:///{tmp_path / 'new.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "lorafleet.controlplane", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "lorafleet controlplane migrate" in result.stderr


def test_restart_adopts_live_replicas_without_duplicates() -> None:
    with live_controlplane(runtime_command=FAKE_RUNTIME, catalog=SEED_CATALOG) as cp:
        httpx.post(f"{cp.url}/v2/endpoint/alice", json=endpoint_body(), headers=cp.headers).raise_for_status()
        url = wait_for(lambda: _running(cp), what="running")["status"]["url"]
        pids = _replica_pids(cp)
        cp.restart(signal.SIGKILL)  # a crash: no shutdown code runs
        time.sleep(2)  # a few reconciler passes
        assert _running(cp)["status"]["url"] == url
        assert _replica_pids(cp) == pids and all(psutil.pid_exists(p) for p in pids)


def test_restart_replaces_replicas_that_died_and_stops_orphans() -> None:
    with live_controlplane(runtime_command=FAKE_RUNTIME, catalog=SEED_CATALOG) as cp:
        httpx.post(f"{cp.url}/v2/endpoint/alice", json=endpoint_body(), headers=cp.headers).raise_for_status()
        url = wait_for(lambda: _running(cp), what="running")["status"]["url"]
        cp.stop()
        (dead,) = _replica_pids(cp)
        os.killpg(dead, signal.SIGKILL)
        orphan = subprocess.Popen(
            [
                *FAKE_RUNTIME.split(),
            ],
            env={**os.environ, "PORT": "0"},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        handle = {
            "replica_key": "rep-orphan",
            "launcher": "process",
            "pid": orphan.pid,
            "started": psutil.Process(orphan.pid).create_time(),
            "port": 1,
            "host": "127.0.0.1",
            "gpus": [],
            "log": "",
            "digest": "",
        }
        (cp.home / "replicas" / "rep-orphan.json").write_text(json.dumps(handle))
        cp.start()
        new = wait_for(lambda: (r := _running(cp)) and r["status"]["url"] != url and r, what="replacement")
        assert orphan.wait(timeout=30) is not None
        assert len(_replica_pids(cp)) == 1 and httpx.get(new["status"]["url"] + "/health").status_code == 200


@pytest.mark.slow
def test_seed_code_with_real_huggingface_hub_reaches_a_replica_answering_with_adapters() -> None:
    model_dir = tiny_model("mistral")
    adapters = standard_adapters(model_dir)
    spec = f"support={adapters['r8-qv']},coder={adapters['r16-all']}"
    with live_controlplane(catalog=SEED_CATALOG, env={"HF_HUB_OFFLINE": "0"}) as cp:
        env = {k: v for k, v in cp.env.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
        env.update(HF_ENDPOINT=cp.url, HF_TOKEN=cp.token, HF_HUB_DISABLE_TELEMETRY="1")
        result = subprocess.run(
            [
                sys.executable,
                str(HERE / "seed_client.py"),
                cp.url,
                str(model_dir),
                spec,
                "mistral-7b-multi-lora",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:] + cp.output()
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out["namespace"] == "alice" and out["url"].startswith("http://127.0.0.1:")
        assert set(out["answers"]) == {"support", "coder"}
        assert all(isinstance(text, str) and text for text in out["answers"].values())
        assert out["paused"] == "paused" and out["resumed"] == "pending"
