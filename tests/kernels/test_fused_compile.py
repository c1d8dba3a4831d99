"""The fused RMSNorm and RoPE kernels compile to Ada (sm_89) and Hopper (sm_90) code without a GPU.

As `test_compile_for_gpu.py` does for the LoRA kernels: Triton's own compiler and bundled ptxas, in
a subprocess (the interpreter flag is fixed at decoration). It catches what only the GPU toolchain
rejects (the q/k branch of the RoPE kernel must yield values of one type), and checks that cos and
sin are the accurate library functions, not the `.approx` instructions whose error grows with the
angle (positions of tens of thousands of tokens).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from lorafleet.kernels import fused_norm, fused_rotary

    arch = int(sys.argv[1])
    FLOATS = ("eps", "offset", "attention_factor")

    def compile(fn, pointers, constexprs, num_warps):
        def kind(name):
            if name in constexprs:
                return "constexpr"
            return pointers.get(name) or ("fp32" if name in FLOATS else "i32")
        signature = {name: kind(name) for name in fn.arg_names}
        return triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})

    for dtype in ("bf16", "fp16", "fp32"):
        act = "*" + dtype
        for has_long in (False, True):
            pointers = {"q_ptr": act, "k_ptr": act, "positions_ptr": "*i64", "inv_freq_ptr": "*fp32",
                        "long_inv_freq_ptr": "*fp32"}
            ptx = compile(fused_rotary._rotary_kernel, pointers,
                          dict(HAS_LONG=has_long, BLOCK_H=64, BLOCK_R=64), 8).asm["ptx"]
            approx = "cos.approx" in ptx or "sin.approx" in ptx
            print(json.dumps({"kernel": "rotary", "dtype": dtype, "approx": approx}))
        for residual in (False, True):
            for offset in (False, True):
                names = ("x_ptr", "residual_ptr", "sum_ptr", "weight_ptr", "out_ptr")
                pointers = {name: act for name in names}
                compiled = compile(fused_norm._rms_norm_kernel, pointers,
                                   dict(HAS_RESIDUAL=residual, HAS_OFFSET=offset, BLOCK=16384), 16)
                print(json.dumps({"kernel": "norm", "dtype": dtype, "shared": compiled.metadata.shared}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [89, 90], ids=["sm_89", "sm_90"])
def test_fused_kernels_compile_for_gpus_with_accurate_cos_and_sin(arch: int, tmp_path: Path) -> None:
    import triton  # noqa: F401  (a missing one must fail, not skip)

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from a cache
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(arch)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(compiled) == 3 * (2 + 4)
    assert not any(c.get("approx") for c in compiled), compiled
    assert all(c.get("shared", 0) <= 99 * 1024 for c in compiled), compiled
