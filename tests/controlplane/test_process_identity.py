"""A replica's PID is trusted only with the start recorded at launch: exact on Linux (clock ticks
since boot and the boot's id), so a wall-clock start moved by the kernel's whole-second `btime`
(an NTP adjustment between the launch and an adopting process's check) still matches, while a
reused PID, a process of another boot, a zombie or a dead process never does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lorafleet.controlplane.launchers.process_identity import is_same_process, start_marks

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# A process whose name (field 2 of /proc/<pid>/stat) holds spaces and parentheses, as a hostile
# command name could: the start field must still be found.
ODD_NAME = r"""
import ctypes, time
ctypes.CDLL(None).prctl(15, b"a) b (c) d", 0, 0, 0)  # PR_SET_NAME
print("named", flush=True)
time.sleep(60)
"""


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen([sys.executable, "-c", ODD_NAME], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "named"
    yield child
    child.kill()
    child.wait()


def _handle(pid: int, **marks: object) -> dict[str, object]:
    return {"pid": pid, **start_marks(pid), **marks}


@linux_only
def test_marks_are_the_start_in_ticks_since_boot_and_the_boot_id(sleeper: subprocess.Popen[str]) -> None:
    marks = start_marks(sleeper.pid)
    assert Path(f"/proc/{sleeper.pid}/comm").read_text().strip() == "a) b (c) d"
    assert marks["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    started_since_boot = marks["start_ticks"] / os.sysconf("SC_CLK_TCK")
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_since_boot
    assert 0 <= age < 60 and abs(marks["started"] - (time.time() - age)) < 2
    assert is_same_process({"pid": sleeper.pid, **marks})


@linux_only
def test_a_wall_clock_start_moved_by_a_whole_second_still_matches(sleeper: subprocess.Popen[str]) -> None:
    handle = _handle(sleeper.pid)
    for shift in (-1.0, 1.0, 3600.0):  # `btime` recomputed after the clock moved; any step
        assert is_same_process({**handle, "started": float(handle["started"]) + shift})  # type: ignore[arg-type]


@linux_only
def test_a_reused_pid_or_another_boot_does_not_match(sleeper: subprocess.Popen[str]) -> None:
    handle = _handle(sleeper.pid)
    assert not is_same_process({**handle, "start_ticks": int(handle["start_ticks"]) + 1})  # type: ignore[call-overload]
    assert not is_same_process({**handle, "boot_id": "00000000-0000-0000-0000-000000000000"})
    assert not is_same_process({**handle, "start_ticks": "not a number"})


def test_a_handle_without_exact_marks_is_compared_by_wall_clock(sleeper: subprocess.Popen[str]) -> None:
    """Handles written before the exact marks existed (a replica adopted across an upgrade)."""
    started = float(start_marks(sleeper.pid)["started"])
    assert is_same_process({"pid": sleeper.pid, "started": started + 0.5})
    assert not is_same_process({"pid": sleeper.pid, "started": started + 1.0})
    assert not is_same_process({"pid": sleeper.pid})


def test_a_dead_or_zombie_process_does_not_match() -> None:
    waits = "import sys; sys.stdin.readline()"
    child = subprocess.Popen([sys.executable, "-c", waits], stdin=subprocess.PIPE)
    handle = _handle(child.pid)
    assert is_same_process(handle)
    assert child.stdin is not None
    child.stdin.close()  # it exits; not reaped yet, so it lingers as a zombie
    deadline = time.monotonic() + 30
    while is_same_process(handle) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_same_process(handle)
    child.wait()
    assert not is_same_process(handle)
    assert start_marks(child.pid) == {"started": 0.0}  # gone: marks that never match
    assert not is_same_process({"pid": "x", "started": 0.0})
