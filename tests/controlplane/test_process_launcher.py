"""The process launcher with real processes: no replica outlives a crash of the launcher without a
handle (the crash points are real `SIGKILL`s of a real launcher process), a replica starts from a
minimal environment the launcher builds, and its captured output stays bounded."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from lorafleet.controlplane.catalog.loader import HostGpu
from lorafleet.controlplane.catalog.types import InstanceType
from lorafleet.controlplane.launchers.base import ReplicaSpec
from lorafleet.controlplane.launchers.process import ProcessConfig, ProcessLauncher
from lorafleet.controlplane.launchers.replica_files import TRUNCATED
from lorafleet.controlplane.settings import Settings

from tests.controlplane.replicas import wait_for

CPU = InstanceType("local", "local", "cpu", "x1", "cpu")
SLEEPER = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(300)'"
# Runs the real launcher in a process of its own and kills that process with SIGKILL at one point
# of `start` (argv: home, point): what the control plane dying there leaves behind.
CRASHING_LAUNCHER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from lorafleet.controlplane.catalog.types import InstanceType
    from lorafleet.controlplane.launchers import process
    from lorafleet.controlplane.launchers.base import ReplicaSpec
    from lorafleet.controlplane.launchers.replica_files import ReplicaFiles
    from lorafleet.controlplane.settings import Settings

    home, point, command = sys.argv[1:4]
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "before-handle":
        ReplicaFiles.write_handle = die
    elif point == "before-gate":
        process._open_gate = die
    launcher = process.ProcessLauncher.from_settings(Settings(home=Path(home), runtime_command=command))
    cpu = InstanceType("local", "local", "cpu", "x1", "cpu")
    launcher.start(ReplicaSpec("rep-crash", "alice", "ep", cpu))
    print("started", flush=True)
    die()
""")


def settings(home: Path, command: str = SLEEPER, **overrides: object) -> Settings:
    return Settings(home=home, runtime_command=command, secret_key="k", **overrides)  # type: ignore[arg-type]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    launcher = ProcessLauncher.from_settings(settings(home))
    for handle in launcher.adopt():  # nothing outlives the test
        launcher.stop(handle)


def _processes_of(home: Path) -> list[psutil.Process]:
    """Processes whose command line names the state folder or the replica (gate, sandbox, server)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(process.info["cmdline"] or [])
        if (str(home) in line or "lorafleet-rep-crash" in line) and process.info["status"] != "zombie":
            found.append(process)
    return found


@pytest.mark.parametrize("point", ["before-handle", "before-gate"])
def test_launcher_killed_before_the_replica_may_run_leaves_no_replica(home: Path, point: str) -> None:
    result = subprocess.run([sys.executable, "-c", CRASHING_LAUNCHER, str(home), point, SLEEPER],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    wait_for(lambda: not _processes_of(home), 30, "the gated replica to exit with its launcher")
    assert ProcessLauncher.from_settings(settings(home)).adopt() == []
    assert not list((home / "replicas").glob("*.json"))


def test_launcher_killed_once_start_returned_leaves_a_replica_the_next_one_adopts(home: Path) -> None:
    result = subprocess.run([sys.executable, "-c", CRASHING_LAUNCHER, str(home), "after-start", SLEEPER],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL and "started" in result.stdout, result.stderr
    (handle,) = ProcessLauncher.from_settings(settings(home)).adopt()
    assert handle["replica_key"] == "rep-crash" and psutil.pid_exists(handle["pid"])


def _script(tmp_path: Path, name: str, text: str) -> tuple[str, str]:
    """A replica command running `text`, and the folder to show the sandbox (LORAFLEET_SANDBOX_PATHS)."""
    folder = tmp_path / "scripts"
    folder.mkdir(mode=0o755, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text))
    (folder / name).chmod(0o644)
    return f"{shlex.quote(sys.executable)} {folder / name}", str(folder)


def test_replica_starts_from_the_launchers_minimal_environment(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFLEET_CANARY", "of the control plane")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    command, folder = _script(tmp_path, "dump_env.py", """
        import json, os, time
        print(json.dumps(dict(os.environ)), flush=True)
        time.sleep(300)
    """)
    launcher = ProcessLauncher.from_settings(
        settings(home, command, sandbox_paths=folder, replica_env={"HF_HUB_OFFLINE": "1"})
    )
    spec = ReplicaSpec("rep-env", "alice", "ep", CPU, env={"MODEL_ID": "org/model", "PORT": "1"},
                       api_key="the-replica-key")
    handle = launcher.start(spec)
    lines = wait_for(lambda: [x for x in launcher.logs(handle) if x.startswith("{")], 60, "the dump")
    env = json.loads(lines[0])
    assert not {"LORAFLEET_CANARY", "PYTHONPATH"} & set(env)
    assert env["MODEL_ID"] == "org/model" and env["HF_HUB_OFFLINE"] == "1"
    assert env["API_KEY"] == "the-replica-key" and env["NUM_SHARD"] == "1"  # a CPU instance: one shard
    assert env["PORT"] == str(handle["port"]) and env["HOSTNAME"] == "127.0.0.1"  # the launcher's, always
    assert env["LOG_FILE"] == f"{handle['folder']}/replica.log" and int(env["LOG_MAX_BYTES"]) > 0
    assert env["TMPDIR"].startswith(handle["folder"]) and env["HOME"].endswith("/namespaces/alice")
    assert "OMP_NUM_THREADS" not in env  # an instance of unknown size: torch's own default
    assert "the-replica-key" not in json.dumps(handle)
    launcher.stop(handle)
    assert not Path(handle["folder"]).exists() and not list((home / "replicas").iterdir())


def test_a_cpu_replica_gets_a_torch_thread_per_core_of_its_instance(tmp_path: Path, home: Path) -> None:
    command, folder = _script(tmp_path, "dump_env.py", """
        import json, os, time
        print(json.dumps(dict(os.environ)), flush=True)
        time.sleep(300)
    """)
    x2 = InstanceType("local", "local", "cpu", "x2", "cpu", num_cpus=2)

    def threads(name: str, operator_env: dict[str, str]) -> str | None:
        launcher = ProcessLauncher.from_settings(
            settings(home, command, sandbox_paths=folder, replica_env=operator_env)
        )
        handle = launcher.start(ReplicaSpec(f"rep-{name}", "alice", "ep", x2, env={"MODEL_ID": "org/model"}))
        lines = wait_for(lambda: [x for x in launcher.logs(handle) if x.startswith("{")], 60, "the dump")
        launcher.stop(handle)
        return json.loads(lines[0]).get("OMP_NUM_THREADS")

    assert threads("default", {}) == "2"
    assert threads("operator", {"OMP_NUM_THREADS": "1"}) == "1"  # the operator's choice wins


def test_an_x2_gpu_replica_gets_its_two_gpus_and_num_shard_2_whatever_the_tenant_set(
    tmp_path: Path, home: Path
) -> None:
    command, folder = _script(tmp_path, "dump_env.py", """
        import json, os, time
        print(json.dumps(dict(os.environ)), flush=True)
        time.sleep(300)
    """)
    gpus = [HostGpu("nvidia-l4", "NVIDIA L4", 24.0) for _ in range(3)]
    config = ProcessConfig.from_settings(settings(home, command, sandbox_paths=folder))
    launcher = ProcessLauncher(config, gpus)
    x2 = InstanceType("local", "local", "nvidia-l4", "x2", "gpu", 2, "nvidia-l4")
    handle = launcher.start(ReplicaSpec("rep-x2", "alice", "ep", x2, env={"NUM_SHARD": "8"}))
    lines = wait_for(lambda: [x for x in launcher.logs(handle) if x.startswith("{")], 60, "the dump")
    env = json.loads(lines[0])
    assert (env["CUDA_VISIBLE_DEVICES"], env["NUM_SHARD"]) == ("0,1", "2")
    launcher.stop(handle)


def test_captured_output_is_capped_and_logs_merge_it_with_the_log_file(tmp_path: Path, home: Path) -> None:
    command, folder = _script(tmp_path, "chatty.py", """
        import os, time
        print("before logging starts", flush=True)
        print("x" * 30_000, flush=True)
        time.sleep(1)
        with open(os.environ["LOG_FILE"], "a") as log:
            log.write("the runtime's own log line\\n")
        time.sleep(300)
    """)
    launcher = ProcessLauncher.from_settings(
        settings(home, command, sandbox_paths=folder, replica_output_max_bytes=10_000)
    )
    handle = launcher.start(ReplicaSpec("rep-chatty", "alice", "ep", CPU))
    output = home / "replicas" / "rep-chatty.output.log"
    wait_for(lambda: output.stat().st_size > 30_000, 60, "the output")
    assert launcher.status(handle).phase == "running"  # each status check caps the output
    assert output.stat().st_size < 10_000
    lines = wait_for(lambda: (x := launcher.logs(handle, 10)) and x[-1] == "the runtime's own log line" and x,
                     60, "the log line after the output")
    assert lines[0] == TRUNCATED.format(limit=10_000).strip()
    launcher.stop(handle)


def test_logs_never_follow_a_symlink_the_replica_planted(tmp_path: Path, home: Path) -> None:
    launcher = ProcessLauncher.from_settings(settings(home))
    handle = launcher.start(ReplicaSpec("rep-link", "alice", "ep", CPU))
    secret = tmp_path / "control-plane-secret"
    secret.write_text("do not show me\n")
    log = Path(handle["folder"]) / "replica.log"
    log.symlink_to(secret)  # what a replica owning its folder can do
    os.utime(log, follow_symlinks=False)  # the newest of the two logs: read last
    assert "do not show me" not in launcher.logs(handle)
    launcher.stop(handle)
