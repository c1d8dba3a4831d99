"""`make demo` end to end: a real control plane, a real replica, the SDK and InferenceClient.

Runs `scripts/demo.py` with `DEMO_EXIT=1` on a free port and a private state folder, and reads
the table it prints: every adapter must answer with its own task, and nothing may stay running.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import httpx
import pytest

from tests.fixtures import REPO_ROOT
from tests.fixtures.trained import DEMO_INPUTS, TASKS, demo_prompt, expected_answer, trained_demo

DEMO = REPO_ROOT / "scripts" / "demo.py"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_demo(demo_dir: Path, port: int | str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DEMO_EXIT": "1",
        "DEMO_PORT": str(port),
        "DEMO_DIR": str(demo_dir),
        "DEMO_WAIT_TIMEOUT": "420",
        "PYTHONPATH": str(REPO_ROOT),
    }
    demo = subprocess.Popen(
        [sys.executable, str(DEMO)], cwd=REPO_ROOT, env=env, stdout=PIPE, stderr=PIPE, text=True
    )
    try:
        stdout, stderr = demo.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        demo.terminate()  # SIGTERM: the demo stops its control plane and replicas before exiting
        stdout, stderr = demo.communicate(timeout=120)
        pytest.fail(f"the demo ran past {timeout:.0f} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)


def _table_rows(stdout: str) -> set[tuple[str, ...]]:
    """The printed table as (model, prompt, answer, mark) tuples; columns are 2+ spaces apart."""
    return {tuple(re.split(r"\s{2,}", line.strip())) for line in stdout.splitlines() if line.startswith("  ")}


@pytest.mark.slow
def test_demo_shows_every_adapter_doing_its_task_then_stops_everything(tmp_path):
    trained_demo()  # built here, not inside the demo's time limit, when the cache is cold
    port = _free_port()
    result = _run_demo(tmp_path / "demo", port, timeout=560)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    rows = _table_rows(result.stdout)
    for items in DEMO_INPUTS:
        for model in [None, *TASKS]:
            row = (model or "base", demo_prompt(list(items)), expected_answer(model, list(items)), "ok")
            assert row in rows, (row, output)
    # The table is not an echo in disguise: the adapters' answers differ from the base's.
    answers = {row[2] for row in rows if len(row) == 4}
    assert len(answers) == len(DEMO_INPUTS) * (1 + len(TASKS)), output

    assert f"http://127.0.0.1:{port}/dashboard" in result.stdout
    url = re.search(r"healthy at (http://\S+)", result.stdout)
    assert url is not None, output
    assert url.group(1) == f"http://127.0.0.1:{port}/endpoints/demo/demo-multi-lora", output  # the gateway
    # The gateway metered every answer: one request per prompt for the base model and each adapter.
    for model in ("base", *TASKS):
        line = next(row for row in rows if row[0] == model and len(row) == 5)
        assert int(line[1]) == len(DEMO_INPUTS) and int(line[2]) > 0 and int(line[3]) > 0, line
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url.group(1)}/health", timeout=2)
    assert "stopped 1 replica(s)" in result.stdout, output


def test_demo_refuses_a_busy_port_with_a_clear_message(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _run_demo(tmp_path / "demo", busy.getsockname()[1], timeout=120)
    assert result.returncode == 1
    assert "is in use" in result.stderr and "DEMO_PORT" in result.stderr


def test_demo_rejects_a_port_that_is_not_a_number(tmp_path):
    result = _run_demo(tmp_path / "demo", "eighty", timeout=60)
    assert result.returncode == 2
    assert "DEMO_PORT" in result.stderr
