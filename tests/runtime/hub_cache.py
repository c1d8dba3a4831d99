"""A Hugging Face Hub cache laid out on disk, as `huggingface_hub` writes it, for offline tests.

`snapshot_download(repo_id)` with `HF_HUB_OFFLINE` and `HF_HUB_CACHE=<cache>` returns
`<cache>/models--org--name/snapshots/<commit>` once `refs/main` names that commit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0" * 40


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Copies `folder` into `cache` as the `main` snapshot of Hub repo `repo_id`; returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot
