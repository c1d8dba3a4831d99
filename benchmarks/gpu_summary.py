"""The one JSON summary of `gpu_check.sh`: each section's outcome and the figures that matter.

Reads what the sections left (their exit codes and durations, the kernel tests' JUnit XML, each
report's JSON), writes `kernel_tests.json` and `gpu_check.json` into the results folder and prints
the summary. Exit code: 0 when every section passed.

    python benchmarks/gpu_summary.py --work WORK --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any


def sections(work: Path) -> dict[str, dict[str, Any]]:
    """name -> {rc, seconds, timed_out} from the lines `name rc seconds` the script appended."""
    found = {}
    path = work / "sections.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, seconds = line.split()
        found[name] = {"rc": int(rc), "seconds": int(seconds), "timed_out": int(rc) in (124, 137)}
    return found


def kernel_tests(xml_path: Path) -> dict[str, Any]:
    if not xml_path.is_file():
        return {"ok": False, "error": f"{xml_path.name} missing (pytest did not finish)"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in ElementTree.parse(xml_path).getroot().iter("testcase"):
        counts["tests"] += 1
        for outcome, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            node = case.find(outcome)
            if node is None:
                continue
            counts[key] += 1
            if outcome != "skipped":
                message = (node.get("message") or "").strip().split("\n")[0][:300]
                failed.append(f"{case.get('classname')}::{case.get('name')}: {message}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ok = counts["tests"] > 0 and not counts["failures"] and not counts["errors"]
    return counts | {"passed": passed, "failed": failed[:60], "ok": ok}


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def highlights(out: Path) -> dict[str, Any]:
    """The headline figures of each report (the full reports sit next to the summary)."""
    found: dict[str, Any] = {}
    engine = _load(out / "engine.json")
    if engine:
        kernels_ok = (engine.get("kernels") or {}).get("ok")
        found["engine"] = {"ok": engine.get("ok"), "errors": engine.get("errors"),
                           "compare": engine.get("compare"), "kernels_ok": kernels_ok}
        keys = ("compiled_while_serving", "graph_steps", "graph_bytes", "memory", "ms_per_step_32req")
        for name in ("cuda_fp32_graphs", "cuda_bf16_graphs"):
            section = engine.get(f"engine_{name}") or {}
            found["engine"][name] = {k: section.get(k) for k in keys}
    attention = _load(out / "attention.json")
    if attention:
        found["attention_decode"] = [{k: row.get(k) for k in ("batch", "context", "ours_us", "gathered_us",
                                                              "ours_fraction_of_peak")}
                                     for row in attention.get("decode", [])]
    lora = _load(out / "kernels.json")
    if lora:
        found["lora_kernels_decode"] = [
            {k: row.get(k) for k in ("layer", "rank", "num_tokens", "num_adapters", "speedup_vs_loop")}
            | {"ours_graph_us": row.get("times_us", {}).get("ours_graph"),
               "bandwidth_fraction": row.get("bandwidth_fraction")}
            for row in lora.get("results", []) if row.get("phase") == "decode"]
    decode = _load(out / "decode.json")
    if decode:
        found["decode"] = {key: decode.get(key) for key in ("errors", "graph_speedup", "lora_vs_loop")}
        for name in ("decode_graphs", "decode_eager"):
            section = decode.get(name) or {}
            keep = ("base_", "lora_", "memory", "num_kv", "log")
            found["decode"][name] = {k: v for k, v in section.items() if k.startswith(keep)}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tests = kernel_tests(args.work / "kernel_tests.xml")
    (args.out / "kernel_tests.json").write_text(json.dumps(tests, indent=1))
    ran = sections(args.work)
    summary = {"ok": bool(ran) and all(s["rc"] == 0 for s in ran.values()) and tests.get("ok", False),
               "sections": ran, "kernel_tests": {k: v for k, v in tests.items() if k != "failed"}
               | {"failed": tests.get("failed", [])[:10]}, **highlights(args.out)}
    text = json.dumps(summary, indent=1, default=str)
    (args.out / "gpu_check.json").write_text(text)
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
