"""The control plane as users run it: a server process, the CLI, the seed's code on the real runtime.

Restarts and replica lifecycles with real replicas: test_real_restart.py, test_real_lifecycle.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.controlplane.conftest import SEED_CATALOG
from tests.controlplane.live import live_controlplane
from tests.fixtures import standard_adapters, tiny_model

HERE = Path(__file__).parent


def test_cli_tokens_create_list_and_revoke() -> None:
    with live_controlplane(catalog=SEED_CATALOG) as cp:
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
