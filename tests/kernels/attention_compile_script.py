"""Compiles the attention kernels for one CUDA arch with the tiles the rules choose (no GPU needed).

Run as `python attention_compile_script.py ARCH` in a process without TRITON_INTERPRET; prints one
JSON line per kernel: shared memory (Triton's figure), the rule's bound, the device limit, and the
registers, stack and local memory of the cubin (`cuobjdump -res-usage`: local memory = spills).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from lorafleet.kernels import attention, attention_prefill
from lorafleet.kernels.attention_config import DeviceLimits, decode_config, prefill_config, smem_bytes
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

LIMITS = {89: DeviceLimits(58, 99 * 1024), 90: DeviceLimits(132, 227 * 1024)}  # L4, H100/H200
CASES = [  # (dtype, head_dim, query heads per KV head)
    ("bf16", 64, 8), ("bf16", 128, 4), ("fp16", 80, 2), ("bf16", 256, 2), ("bf16", 128, 64),
    ("fp32", 128, 4), ("fp32", 256, 1),
]
PLAIN = [("bf16", 128, 4), ("fp16", 80, 2)]
FLOATS = {"qk_scale", "soft_cap", "cap_log2"}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def signature(fn, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name in FLOATS:
            return "fp32"
        return pointers.get(name, "*i32" if name.endswith("_ptr") else "i32")

    return {name: kind(name) for name in fn.arg_names}


def compile_kernel(fn, pointers, constexprs, arch: int, num_warps: int, num_stages: int) -> dict:
    compiled = triton.compile(ASTSource(fn, signature(fn, pointers, constexprs), constexprs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    return {"shared": compiled.metadata.shared, **{k.lower(): int(v) for k, v in fields.items()}}


def report(kernel: str, arch: int, dtype: str, head_dim: int, group: int, tile: list[int], bound: int,
           usage: dict, **extra: object) -> None:
    print(json.dumps({"kernel": kernel, "arch": arch, "dtype": dtype, "head_dim": head_dim, "group": group,
                      "tile": tile, "limit": LIMITS[arch].smem_bytes, "bound": bound, **extra, **usage}),
          flush=True)


def main(arch: int) -> None:
    limits = LIMITS[arch]
    # every case with all options on (the most registers); PLAIN cases also without any (the
    # usual serving variant) and, for decode, unsplit (a batch that fills the device)
    variants = [(case, True) for case in CASES] + [(case, False) for case in PLAIN]
    for (dtype, head_dim, group), options in variants:
        act, elem = "*" + dtype, 4 if dtype == "fp32" else 2
        common = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=16, HAS_WINDOW=options,
                      HAS_SOFT_CAP=options, DOT_FP32=dtype == "fp32")
        dec = decode_config(batch=1 if options else 512, num_kv_heads=8, group=group, head_dim=head_dim,
                            max_context=32768, elem=elem, limits=limits)
        constexprs = common | dict(BLOCK_G=dec.block_g, BLOCK_N=dec.block_n, BLOCK_D=dec.block_d,
                                   IS_SPLIT=dec.is_split)
        pointers = {"q_ptr": act, "k_cache_ptr": act, "v_cache_ptr": act, "out_ptr": act,
                    "part_out_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32"}
        usage = compile_kernel(attention._decode_kernel, pointers, constexprs, arch, dec.num_warps,
                               dec.num_stages)
        report("decode", arch, dtype, head_dim, group, [dec.block_g, dec.block_n, dec.num_warps],
               smem_bytes(dec.block_g, dec.block_n, dec.block_d, elem), usage, options=options,
               split=dec.is_split)
        pre = prefill_config(group=group, head_dim=head_dim, elem=elem, limits=limits)
        constexprs = common | dict(BLOCK_G=pre.block_g, BLOCK_Q=pre.block_q, BLOCK_N=pre.block_n,
                                   BLOCK_D=pre.block_d)
        pointers = {"q_ptr": act, "k_cache_ptr": act, "v_cache_ptr": act, "out_ptr": act}
        usage = compile_kernel(attention_prefill._prefill_kernel, pointers, constexprs, arch, pre.num_warps,
                               pre.num_stages)
        report("prefill", arch, dtype, head_dim, group, [pre.block_m, pre.block_n, pre.num_warps],
               smem_bytes(pre.block_m, pre.block_n, pre.block_d, elem), usage, options=options)
    for dtype, block_d in (("bf16", 128), ("fp32", 256)):
        constexprs = dict(HEAD_DIM=block_d, BLOCK_D=block_d, HAS_WINDOW=True)
        pointers = {"part_out_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32",
                    "out_ptr": "*" + dtype}
        usage = compile_kernel(attention._decode_reduce_kernel, pointers, constexprs, arch,
                               1 if block_d <= 128 else 2, 2)
        report("reduce", arch, dtype, block_d, 0, [block_d], limits.smem_bytes, usage)


if __name__ == "__main__":
    main(int(sys.argv[1]))
