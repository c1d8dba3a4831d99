"""What the replica sandbox costs: start → healthy of a real runtime replica through the process
launcher, sandboxed (bubblewrap, a uid per namespace) and not (`LORAFLEET_ISOLATION=none`).

Run: `.venv/bin/python benchmarks/sandbox.py [--repeats 5]` (as root with bubblewrap installed).
Writes benchmarks/results/sandbox.json and sandbox.png. Both runs use the tiny test model with one
adapter; the figure is the median over `--repeats` starts, each a fresh replica.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafleet.controlplane.catalog.types import InstanceType  # noqa: E402
from lorafleet.controlplane.launchers.base import LocalFolder, ReplicaSpec  # noqa: E402
from lorafleet.controlplane.launchers.process import ProcessLauncher  # noqa: E402
from lorafleet.controlplane.settings import Settings  # noqa: E402

from tests.fixtures import fixtures_dir, standard_adapters, tiny_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CPU = InstanceType("local", "local", "cpu", "x1", "cpu")


def start_to_healthy(launcher: ProcessLauncher, key: str, model: Path, adapter: Path) -> float:
    folders = tuple(LocalFolder(str(p), str(p)) for p in (model, adapter))
    spec = ReplicaSpec(key, "bench", "ep", CPU, env={"MODEL_ID": str(model), "LORA_ADAPTERS": f"a={adapter}"},
                       api_key="bench-key", folders=folders)
    started = time.monotonic()
    handle = launcher.start(spec)
    try:
        url = f"http://127.0.0.1:{handle['port']}/health"
        while time.monotonic() - started < 300:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if launcher.status(handle).phase == "exited":
                raise RuntimeError("\n".join(launcher.logs(handle, 40)))
            time.sleep(0.05)
        raise RuntimeError("not healthy after 300 s")
    finally:
        launcher.stop(handle)


def measure(isolation: str, repeats: int, model: Path, adapter: Path) -> dict[str, object]:
    home = Path(tempfile.mkdtemp(prefix=f"lorafleet-bench-{isolation}-"))
    settings = Settings(home=home, isolation=isolation, secret_key="bench", local_roots=str(fixtures_dir()),
                        replica_env={"HF_HUB_OFFLINE": "1"})
    launcher = ProcessLauncher.from_settings(settings)
    times = [start_to_healthy(launcher, f"rep-{isolation}-{i}", model, adapter) for i in range(repeats)]
    return {"isolation": launcher.isolation.label, "start_to_healthy_s": statistics.median(times),
            "runs_s": [round(t, 3) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = tiny_model("mistral")
    adapter = standard_adapters(model)["r8-qv"]
    results = {"none": measure("none", args.repeats, model, adapter),
               "sandbox": measure("sandbox", args.repeats, model, adapter)}
    results["sandbox_overhead_s"] = (results["sandbox"]["start_to_healthy_s"]  # type: ignore[operator]
                                     - results["none"]["start_to_healthy_s"])
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox.json").write_text(json.dumps(results, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    labels = [str(results[k]["isolation"]) for k in ("none", "sandbox")]  # type: ignore[index]
    axis.bar(labels, [results[k]["start_to_healthy_s"] for k in ("none", "sandbox")])  # type: ignore[index]
    axis.set_ylabel("start → healthy (s, median)")
    axis.set_title("Replica start, tiny model + 1 adapter")
    figure.tight_layout()
    figure.savefig(RESULTS / "sandbox.png", dpi=120)


if __name__ == "__main__":
    main()
