"""Which process a PID names: the process launcher trusts a replica's PID only together with the
start it recorded at launch (PIDs are reused).

On Linux the start is the process's `starttime` from `/proc/<pid>/stat` (clock ticks since boot)
with the boot's id: exact, and unaffected by changes to the wall clock. A wall-clock start time
is not enough there: psutil's `create_time()` is those ticks plus `/proc/stat`'s `btime`, a whole
number of seconds that the kernel derives from the wall clock, so an NTP adjustment between the
launch and a later check (another control-plane process adopting the replica) can move it by
exactly one second for the same process.

Elsewhere, and for handles written before the exact marks were recorded, the wall-clock start
time psutil reports is compared within a second.

Example:
    >>> marks = start_marks(os.getpid())   # {"started": 1.7e9, "boot_id": "...", "start_ticks": 123}
    >>> is_same_process({"pid": os.getpid(), **marks})
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
WALL_CLOCK_SLACK_S = 1.0  # the fallback's tolerance (the wall-clock start is rounded by psutil)


def start_marks(pid: int) -> dict[str, Any]:
    """The handle fields that identify process `pid`: `started` (wall clock, seconds since the
    epoch) always; `boot_id` and `start_ticks` where `/proc` has them. Empty-valued marks
    (`started` 0.0) if the process is already gone, so it never matches later."""
    marks: dict[str, Any] = {"started": 0.0}
    try:
        marks["started"] = psutil.Process(pid).create_time()
    except psutil.Error:
        return marks
    boot_id, ticks = _boot_id(), _start_ticks(pid)
    if boot_id is not None and ticks is not None:
        marks.update(boot_id=boot_id, start_ticks=ticks)
    return marks


def is_same_process(handle: Mapping[str, Any]) -> bool:
    """Whether `handle["pid"]` is still the live (not zombie) process its marks were taken from."""
    try:
        pid = int(handle["pid"])
        process = psutil.Process(pid)
        boot_id = _boot_id()
        if "start_ticks" in handle and boot_id is not None:
            same = handle.get("boot_id") == boot_id and _start_ticks(pid) == int(handle["start_ticks"])
        else:
            same = abs(process.create_time() - float(handle.get("started", 0))) < WALL_CLOCK_SLACK_S
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """Field 22 of `/proc/<pid>/stat`; the command name (field 2) may hold spaces and parentheses,
    so the fields are counted after its closing parenthesis (field 3 is the first there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 1 :].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None

