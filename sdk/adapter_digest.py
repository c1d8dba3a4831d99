"""An adapter's content digest: its identity in the prefix cache and, for the control plane, its version.

SHA-256 over the files that define the adapter (`adapter_config.json`, `adapter_model.safetensors`),
each prefixed with its name and length, read in chunks (an adapter may be hundreds of MB). Two
folders with the same files have the same digest wherever they live; any change in either file
gives a new one. The runtime (`lorafleet.runtime.adapters.digest`) and the control plane
(`endpoints/adapters.py`, which hashes folders under `LOCAL_ROOTS` without importing torch) share it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FILES = ("adapter_config.json", "adapter_model.safetensors")
CHUNK = 1 << 20


def adapter_digest(folder: Path) -> str:
    """Hex SHA-256 of the adapter's files in `folder` (a missing file counts as empty)."""
    digest = hashlib.sha256()
    for name in FILES:
        path = folder / name
        size = path.stat().st_size if path.is_file() else -1
        digest.update(f"{name}\0{size}\0".encode())
        if size > 0:
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()
