"""The files of one process-launched replica, under `<home>/replicas` (a folder only the control
plane can read):

* `<key>.json`: the handle (0600), written through a temporary file and a rename before the
  replica may start (see `ProcessLauncher.start`), so `adopt()` always finds a started replica;
* `<key>.output.log`: what the replica writes to stdout/stderr (0600, the control plane's), which holds
  what happens before its logging starts (an import error, a bad flag). The replica writes it
  through the file descriptor it inherits, in append mode, so `cap_output` can truncate it;
* `<key>/`: the replica's own folder (0700, the replica's uid): `replica.log` (its log, which the
  runtime rotates at `LOG_MAX_BYTES`, keeping `replica.log.1`) and `tmp/` (`TMPDIR`).

`tail()` reads the last lines of both logs, the more recently written one last.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from lorafleet.controlplane.launchers.sandbox import owned_folder, write_private

TRUNCATED = "[lorafleet: earlier output dropped: it passed {limit} bytes]\n"


def tail_lines(path: Path, count: int, block: int = 65536) -> list[str]:
    """The last `count` lines of a regular file, reading backwards in blocks (logs can be large).

    The log lies in a folder the replica owns: a symlink (to the database, say) or a FIFO put in
    its place is not followed nor waited on; it reads as no lines.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        handle.seek(0, os.SEEK_END)
        end = position = handle.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            position = max(0, position - block)
            handle.seek(position)
            data = handle.read(end - position)
    return data.decode("utf-8", errors="replace").splitlines()[-count:] if count > 0 else []


class ReplicaFiles:
    """Paths and chores of one replica's files (no process handling)."""

    def __init__(self, state_dir: Path, replica_key: str) -> None:
        self.handle = state_dir / f"{replica_key}.json"
        self.output = state_dir / f"{replica_key}.output.log"
        self.folder = state_dir / replica_key
        self.log = self.folder / "replica.log"
        self.tmp = self.folder / "tmp"

    @classmethod
    def of(cls, handle: dict[str, Any]) -> ReplicaFiles | None:
        """The files a handle names (None for a handle of an older control plane without them)."""
        folder = handle.get("folder")
        return cls(Path(folder).parent, Path(folder).name) if folder else None

    def prepare(self, uid: int | None) -> None:
        """The replica's folder for `uid` (fresh), and an empty output file of the control plane's."""
        shutil.rmtree(self.folder, ignore_errors=True)
        owned_folder(self.folder, uid)
        owned_folder(self.tmp, uid)
        fd = os.open(self.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def open_output(self) -> int:
        """A descriptor for the replica's stdout/stderr (append mode: truncation stays safe)."""
        return os.open(self.output, os.O_WRONLY | os.O_APPEND)

    def write_handle(self, handle: dict[str, Any]) -> None:
        write_private(self.handle, json.dumps(handle))

    def cap_output(self, limit: int) -> None:
        """Empties the output file once it passes `limit` bytes, leaving a note (the runtime's log
        file is where its lines go once logging is up; this file only needs what came before)."""
        try:
            if self.output.stat().st_size <= limit:
                return
            with self.output.open("r+b") as handle:
                handle.truncate(0)
                handle.write(TRUNCATED.format(limit=limit).encode())
        except FileNotFoundError:
            return

    def tail(self, count: int) -> list[str]:
        """The last `count` lines of the output and the log, the more recently written one last."""
        def written(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except OSError:
                return 0.0

        first, last = sorted((self.output, self.log), key=written)
        return (tail_lines(first, count) + tail_lines(last, count))[-count:] if count > 0 else []

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.output.unlink(missing_ok=True)
        self.handle.unlink(missing_ok=True)
