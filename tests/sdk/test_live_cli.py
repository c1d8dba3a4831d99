"""Every `lorafleet` CLI command against a real control plane (reconciler off), in process and
once through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lorafleet import Client, cli

LORAFLEET_SCRIPT = Path(sys.executable).with_name("lorafleet")
CREATE_FLAGS = ["--repository", "org/tiny-model", "--accelerator", "cpu", "--instance-size", "x1",
                "--instance-type", "cpu", "--region", "local", "--vendor", "local"]  # fmt: skip


@pytest.fixture
def run(static_cp, capsys):
    """Runs `lorafleet endpoints ...` in process; returns (exit status, stdout, stderr)."""

    def run_cli(*args: str) -> tuple[int, str, str]:
        code = cli.main(["endpoints", *args, "--url", static_cp.url, "--token", static_cp.token])
        out, err = capsys.readouterr()
        return code, out, err

    return run_cli


def test_every_endpoints_command_round_trip(static_cp, run, endpoint_name):
    name = endpoint_name(static_cp)
    adapters = "LORA_ADAPTERS=a=o/x"
    code, out, _ = run("create", name, *CREATE_FLAGS, "--env", adapters, "--tag", "dev", "-ojson")
    created = json.loads(out)
    assert code == 0 and created["name"] == name and created["status"]["state"] == "pending"
    assert created["model"]["env"] == {"LORA_ADAPTERS": "a=o/x"} and created["tags"] == ["dev"]

    code, out, _ = run("list")
    row = next(line for line in out.splitlines() if line.startswith(name))
    assert code == 0 and out.startswith("NAME") and row.split()[1] == "pending"

    code, out, _ = run("describe", name, "-o", "json")
    assert code == 0 and json.loads(out)["name"] == name

    code, out, _ = run("update", name, "--max-replica", "2", "--env", "MAX_INPUT_LENGTH=64", "-o", "json")
    updated = json.loads(out)
    assert code == 0 and updated["compute"]["scaling"]["maxReplica"] == 2
    assert updated["model"]["env"] == {"MAX_INPUT_LENGTH": "64"}  # env is replaced as a whole

    for command, state in (("pause", "paused"), ("resume", "pending"), ("scale-to-zero", "scaledToZero")):
        code, out, _ = run(command, name)
        rows = dict(line.split(None, 1) for line in out.splitlines())
        assert code == 0 and rows["status"] == state, command

    code, out, _ = run("logs", name, "--tail", "5", "-o", "json")
    assert code == 0 and isinstance(json.loads(out)["logs"], str)

    code, out, _ = run("usage", name)
    assert code == 0 and out.startswith("No requests since")
    code, out, _ = run("usage", name, "-o", "json")
    assert code == 0 and json.loads(out) == {"adapters": [], "since": created["status"]["createdAt"]}

    code, out, _ = run("delete", name, "--yes")
    assert code == 0 and out.strip() == f"Deleted endpoint alice/{name}."
    code, out, err = run("describe", name)
    assert code == 1 and out == "" and f"Endpoint {name!r} not found" in err and "HTTP 404" in err


def test_wait_timeout_prints_progress_lines_and_exits_1(static_cp, run, endpoint_name):
    name = endpoint_name(static_cp)
    assert run("create", name, *CREATE_FLAGS)[0] == 0
    code, out, err = run("wait", name, "--timeout", "0.3", "--refresh-every", "0.1")
    assert code == 1 and out == ""
    assert f"alice/{name}: pending - Endpoint waiting to be scheduled" in err
    assert "was not ready after 0.3s; it is 'pending'" in err


def test_server_errors_are_reported_on_stderr_with_exit_1(static_cp, run, endpoint_name):
    code, _, err = run("create", endpoint_name(static_cp), *CREATE_FLAGS[:-2], "--vendor", "nowhere")
    assert code == 1 and "nowhere" in err and "HTTP 400" in err


def test_controlplane_commands_are_delegated(static_cp, monkeypatch, capsys):
    for key, value in static_cp.env.items():
        if key.startswith("LORAFLEET_"):
            monkeypatch.setenv(key, value)
    assert cli.main(["controlplane", "create-token", "--namespace", "carol"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with Client(static_cp.url, token) as client:
        assert client.whoami()["name"] == "carol"


def test_installed_console_script_lists_endpoints(static_cp, endpoint_name, static_client):
    from lorafleet import create_inference_endpoint

    from tests.sdk.conftest import CPU_INSTANCE

    name = endpoint_name(static_cp)
    create_inference_endpoint(name, repository="org/tiny-model", client=static_client, **CPU_INSTANCE)
    env = {**os.environ, "LORAFLEET_URL": static_cp.url, "LORAFLEET_TOKEN": static_cp.token}
    result = subprocess.run([str(LORAFLEET_SCRIPT), "endpoints", "list", "-o", "json"], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert name in [e["name"] for e in json.loads(result.stdout)]
