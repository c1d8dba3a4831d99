"""Confining a replica on this host: a bubblewrap sandbox, as an unprivileged uid per namespace.

A replica runs a tenant's input, so the process launcher assumes it is hostile (docs/security.md):

* **Filesystem**: bubblewrap (`bwrap`) gives the replica a root of its own holding only the system
  (`/usr`, `/etc`, read-only), the Python environment that runs the runtime (read-only), the
  model and adapter folders its spec names (read-only), its namespace's folder (`HOME`, the Hub
  cache) and its own folder (log, temporary files). The control plane's state folder, database,
  secret key and other replicas' folders do not exist in there.
* **Processes**: new PID, IPC, UTS and cgroup namespaces: `/proc` shows the replica's own processes
  only, so no other process's environment or command line can be read or signalled.
* **User**: when the control plane runs as root, each namespace gets a uid of its own
  (`REPLICA_UID_BASE` and up, no capabilities, `no_new_privs`, `RLIMIT_NPROC`), so even a replica
  that escaped its mount namespace reads nothing the control plane or another tenant owns.

The network is shared with the host (replicas listen on loopback for the control plane); their
own API key guards them. Where bubblewrap is missing or user namespaces are off, `auto` falls back
to running replicas unconfined and says so in the log; `LORAFLEET_ISOLATION=sandbox` refuses that.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lorafleet.controlplane.launchers.base import LauncherError, LocalFolder, NoCapacityError

log = logging.getLogger("lorafleet.controlplane.launchers")

SYSTEM_READ_ONLY = ("/usr", "/etc", "/sys")
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
TMP_BYTES = 256 << 20  # /tmp and /dev/shm are memory: capped; TMPDIR points at the replica's disk folder
SHM_BYTES = 64 << 20
# What the runtime's Python needs to read: its prefixes, its import path and lorafleet's packages
# (an editable install maps them outside site-packages). Printed by the interpreter itself, run
# with the replicas' environment, so PYTHONPATH and friends of the control plane do not count.
_PYTHON_PATHS = """
import importlib.util, json, os, sys
paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(os.path.realpath(sys.executable))}
paths.update(p for p in sys.path if p and os.path.isdir(p))
for name in ("lorafleet", "lorafleet.runtime", "lorafleet.kernels"):
    spec = importlib.util.find_spec(name)
    paths.update((spec.submodule_search_locations or []) if spec else [])
print(json.dumps(sorted(paths)))
"""


@dataclass(frozen=True)
class Isolation:
    """How this host confines replicas (chosen once, at start-up, by `detect`).

    Args:
        sandbox: replicas run inside bubblewrap.
        switch_user: replicas run as their namespace's uid (only root can switch).
        note: what is missing, for the log (empty when both are on).
    """

    sandbox: bool
    switch_user: bool
    note: str = ""

    @property
    def label(self) -> str:
        if not self.sandbox:
            return "none"
        return "sandbox, one uid per namespace" if self.switch_user else "sandbox, same user"


def detect(setting: str) -> Isolation:
    """The isolation this host allows: `auto` takes what works, `sandbox` insists, `none` skips it."""
    if setting == "none":
        return Isolation(False, False, "LORAFLEET_ISOLATION=none")
    root = os.geteuid() == 0
    tools = ("bwrap", "setpriv", "prlimit") if root else ("bwrap",)
    missing = [tool for tool in tools if not shutil.which(tool)]
    problem = f"{', '.join(missing)} not found (Debian: apt-get install bubblewrap)" if missing else ""
    if not problem:
        problem = _bwrap_problem()
    if problem:
        if setting == "sandbox":
            raise LauncherError(f"LORAFLEET_ISOLATION=sandbox, but replicas cannot be sandboxed: {problem}")
        return Isolation(False, False, problem)
    note = "" if root else "the control plane is not root: replicas keep its uid (namespaces only)"
    return Isolation(True, root, note)


def _bwrap_problem() -> str:
    """'' if bubblewrap can build a sandbox here (user namespaces may be off, e.g. in containers)."""
    probe = ["bwrap", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid", "true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30, env={"PATH": os.defpath})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap does not run: {e}"
    return "" if result.returncode == 0 else f"bwrap cannot create a sandbox here: {result.stderr.strip()}"


def python_paths(python: str = sys.executable) -> tuple[str, ...]:
    """Folders the runtime's interpreter reads, fewest covering (nothing under the system folders)."""
    env = {"PATH": os.defpath, "HOME": "/nonexistent"}
    try:
        out = subprocess.run([python, "-c", _PYTHON_PATHS], capture_output=True, text=True, timeout=120,
                             env=env, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise LauncherError(f"cannot list the folders {python} reads: {e}") from e
    return _outermost(p for p in json.loads(out) if not _under_any(p, SYSTEM_READ_ONLY))


@dataclass(frozen=True)
class Mounts:
    """What one replica sees besides the system.

    Args:
        read_only: host folders shown at the same path, read-only (the interpreter, operator paths).
        folders: the spec's model and adapter folders (read-only; `real` shown at `path`).
        writable: the replica's own folders (its namespace's and its own).
        devices: device nodes to pass through (GPUs).
    """

    read_only: tuple[str, ...]
    folders: tuple[LocalFolder, ...]
    writable: tuple[str, ...]
    devices: tuple[str, ...] = ()


def sandbox_command(command: list[str], mounts: Mounts, *, cwd: str, uid: int | None,
                    max_processes: int) -> list[str]:
    """`command` wrapped in bubblewrap (and, with `uid`, run as that uid with no privileges)."""
    args = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs",
            "/dev/shm", "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    for path in SYSTEM_READ_ONLY:
        args += ["--ro-bind", path, path]
    for link in SYSTEM_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    binds = [(p, p, "--ro-bind") for p in mounts.read_only if not _under_any(p, SYSTEM_READ_ONLY)]
    binds += [(f.real, f.path, "--ro-bind-try") for f in mounts.folders]
    binds += [(p, p, "--bind") for p in mounts.writable]
    binds += [(d, d, "--dev-bind") for d in mounts.devices]
    made: set[str] = {"/tmp", "/dev"}
    bound: list[str] = list(SYSTEM_READ_ONLY)
    for source, target, how in sorted(binds, key=lambda b: b[1]):
        if source == target and how == "--ro-bind" and _under_any(target, bound):
            continue  # already visible through a folder bound above it
        for parent in map(str, reversed(Path(target).parents[:-1])):  # bwrap would make them 0700
            if parent not in made and not _under_any(parent, bound):
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += [how, source, target]
        bound.append(target)
    args += ["--chdir", cwd, "--"]
    if uid is not None:  # no capability, no setuid gain, a process cap for the namespace's uid
        args += ["prlimit", f"--nproc={max_processes}", "setpriv", f"--reuid={uid}", f"--regid={uid}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return [*args, *command]


class NamespaceUsers:
    """The uid each namespace's replicas run as, kept in `<home>/replica-uids.json` so it outlives
    restarts (files a namespace's replicas wrote stay theirs)."""

    def __init__(self, path: Path, base: int, count: int) -> None:
        self._path, self._base, self._count = path, base, count
        self._lock = threading.Lock()

    def uid(self, namespace: str) -> int:
        with self._lock:
            table: dict[str, int] = json.loads(self._path.read_text()) if self._path.exists() else {}
            if namespace in table:
                return table[namespace]
            used = set(table.values())
            uid = next((u for u in range(self._base, self._base + self._count) if u not in used), None)
            if uid is None:
                raise NoCapacityError(
                    f"no replica uid left for namespace {namespace!r}: all {self._count} from "
                    f"{self._base} are taken (LORAFLEET_REPLICA_UID_BASE, LORAFLEET_REPLICA_UID_COUNT)"
                )
            table[namespace] = uid
            write_private(self._path, json.dumps(table, indent=1, sort_keys=True))
            return uid


def write_private(path: Path, text: str) -> None:
    """Writes `path` (0600) through a temporary file and a rename: a reader never sees half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def owned_folder(path: Path, uid: int | None) -> Path:
    """Makes `path` a 0700 folder of `uid` (of this user when None); re-owns one that moved uid."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if uid is not None and path.stat().st_uid != uid:
        for folder, dirs, files in os.walk(path):
            for name in (folder, *(os.path.join(folder, n) for n in dirs + files)):
                os.lchown(name, uid, uid)
    path.chmod(0o700)
    return path


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what the runtime reads


def stage_adapter_files(source: Path, into: Path, uid: int | None) -> str:
    """Copies an adapter's files (only those the runtime reads, never through a symlink leading
    out of the folder) into a new subfolder of `into`, readable by `uid`; returns its path."""
    real = source.resolve()
    into.mkdir(mode=0o755, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="adapter-", dir=into))
    for name in ADAPTER_FILES:
        path = (real / name).resolve()
        if path.parent != real or not path.is_file():
            continue  # missing or pointing elsewhere: the runtime's load reports what is missing
        shutil.copyfile(path, target / name)
    for path in (into, target, *target.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
        if uid is not None:
            os.lchown(path, uid, uid)
    return str(target)


def gpu_devices() -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in Path("/dev").glob("nvidia*")))


def _under_any(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _outermost(paths: Iterable[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not _under_any(path, kept):
            kept.append(path)
    return tuple(kept)
