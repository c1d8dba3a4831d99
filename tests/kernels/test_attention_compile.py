"""The attention kernels compile for sm_89 (L4: 99 KiB shared memory) and sm_90 (H100/H200) with
the tiles the rules choose, using Triton's bundled ptxas, on a machine without a GPU.

The interpreter runs the kernels' semantics but never the GPU compiler: this catches what only it
rejects (dot shapes, layouts, shared memory) and checks the rule's promises on real machine code:
Triton's shared memory <= the rule's bound <= the device's limit, and no register spills (no
stack frame, no local memory in `cuobjdump -res-usage`). One subprocess per arch, without
TRITON_INTERPRET (it is fixed when the kernels are decorated), run side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("attention_compile_script.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_attention_kernels_compile_for_l4_and_hopper_within_shared_memory_and_without_spills(
    tmp_path: Path,
) -> None:
    import triton  # noqa: F401  (installed with the runtime extra; a missing one must fail, not skip)

    runs = {}
    for arch in (89, 90):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = str(tmp_path / f"cache{arch}")  # compile for real, not from a cache
        env["TRITON_DEFAULT_FP_FUSION"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        runs[arch] = subprocess.Popen([sys.executable, str(SCRIPT), str(arch)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for run in runs.values():
        stdout, stderr = run.communicate(timeout=400)
        assert run.returncode == 0, stderr[-4000:]
        reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert {r["kernel"] for r in reports} == {"decode", "prefill", "reduce"}
        assert len(reports) == 2 * (7 + 2) + 2, stdout
        assert {r.get("split") for r in reports if r["kernel"] == "decode"} == {True, False}
        for report in reports:
            assert report["shared"] <= report["bound"] <= report["limit"], report
            assert report["stack"] == 0 and report["local"] == 0, f"spills: {report}"
            assert report["reg"] <= 255, report
