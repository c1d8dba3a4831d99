"""Live adapters: how long a change of an endpoint's adapter set takes to reach every replica,
against the old way (a new `LORA_ADAPTERS` in the spec: a rolling restart).

Run: `.venv/bin/python benchmarks/live_adapters.py [--rounds 5 --replicas 2]`.
Prints JSON and writes benchmarks/results/live_adapters.json and live_adapters.png.

One endpoint of `--replicas` real replicas (tiny Mistral), reconciler passes every 0.5 s. Each round:

* **replace live**: `PUT .../adapters/support` alternating between two adapters' files, timed
  until `GET .../adapters` shows the new digest ready on every replica (the sync's admin API
  calls, no restart);
* **add live** and **remove live**: `PUT`/`DELETE .../adapters/extra`, until it is ready on every
  replica / gone from the list and from every replica's `/v1/lora_adapters`;
* **rolling restart**: `PUT` of the endpoint with the other adapter in `LORA_ADAPTERS` (the HF
  way), until the endpoint runs on as many ready replicas, all new.

Everything runs on this machine (the control plane, the replicas and this script share its
cores), so the figures compare the two ways within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.controlplane.conftest import SEED_CATALOG  # noqa: E402
from tests.controlplane.live import LiveControlPlane, live_controlplane  # noqa: E402
from tests.controlplane.replicas import EndpointView, api_key_of, real_body, wait_for  # noqa: E402
from tests.fixtures import standard_adapters, tiny_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _items(ep: EndpointView) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{ep.path}/adapters", headers=ep.cp.headers, timeout=30)
    response.raise_for_status()
    return {item["name"]: item for item in response.json()["items"]}


def _ready(ep: EndpointView, name: str, digest: str | None, replicas: int) -> bool:
    item = _items(ep).get(name)
    return bool(item and item["state"] == "ready" and item["readyReplicas"] == replicas
                and (digest is None or item["digest"] == digest))


def _gone_everywhere(ep: EndpointView, name: str) -> bool:
    if name in _items(ep):
        return False
    for url in ep.replica_urls().values():
        headers = {"Authorization": f"Bearer {api_key_of(ep.cp, url)}"}
        listed = httpx.get(f"{url}/v1/lora_adapters", headers=headers, timeout=30).json()["data"]
        if any(a["name"] == name for a in listed):
            return False
    return True


def _put(ep: EndpointView, name: str, source: Path) -> str:
    response = httpx.put(f"{ep.path}/adapters/{name}", json={"source": str(source)}, headers=ep.cp.headers,
                         timeout=60)
    response.raise_for_status()
    return response.json()["digest"]


def _timed(action: Any, done: Any, what: str) -> float:
    started = time.monotonic()
    action()
    wait_for(done, 300, what)
    return time.monotonic() - started


def one_round(ep: EndpointView, files: dict[str, Path], replicas: int) -> dict[str, float]:
    current = _items(ep)["support"]["source"]  # replace with the other files, never a no-op PUT
    source = files["r8-qv"] if current == str(files["r16-all"]) else files["r16-all"]
    seconds = {}
    digest: dict[str, str] = {}
    seconds["replace_live"] = _timed(lambda: digest.update(d=_put(ep, "support", source)),
                                     lambda: _ready(ep, "support", digest["d"], replicas), "replaced")
    seconds["add_live"] = _timed(lambda: _put(ep, "extra", files["r64-rslora"]),
                                 lambda: _ready(ep, "extra", None, replicas), "added")
    delete = lambda: httpx.delete(f"{ep.path}/adapters/extra", headers=ep.cp.headers,  # noqa: E731
                                  timeout=30).raise_for_status()
    seconds["remove_live"] = _timed(delete, lambda: _gone_everywhere(ep, "extra"), "removed")
    old = set(ep.pids().values())
    seeded = ep.get()["model"]["env"].get("LORA_ADAPTERS", "")  # the spec's value: change it
    other = files["r16-all"] if str(files["r8-qv"]) in seeded else files["r8-qv"]
    env = real_body("x", other)["model"]["image"]["custom"]["env"]
    update = {"model": {"image": {"custom": {"env": env}}}}

    def restarted() -> bool:
        raw = ep.get()
        pids = set(ep.pids().values())
        return (raw["status"]["state"] == "running" and raw["status"]["readyReplica"] == replicas
                and len(pids) == replicas and not pids & old)

    seconds["rolling_restart"] = _timed(
        lambda: httpx.put(ep.path, json=update, headers=ep.cp.headers, timeout=60).raise_for_status(),
        restarted, "rolled")
    wait_for(lambda: _ready(ep, "support", None, replicas), 300, "support ready after the restart")
    return seconds


def run(cp: LiveControlPlane, rounds: int, replicas: int) -> dict[str, Any]:
    files = standard_adapters(tiny_model("mistral"))
    body = real_body("bench-live", files["r8-qv"])
    body["compute"]["scaling"].update(minReplica=replicas, maxReplica=replicas)  # type: ignore[index]
    response = httpx.post(f"{cp.url}/v2/endpoint/{cp.namespace}", json=body, headers=cp.headers, timeout=30)
    response.raise_for_status()
    ep = EndpointView(cp, "bench-live")
    ep.wait_running(300)
    wait_for(lambda: _ready(ep, "support", None, replicas), 300, "first set ready")
    samples = [one_round(ep, files, replicas) for _ in range(rounds)]
    summary = {key: {"median_s": round(statistics.median(s[key] for s in samples), 2),
                     "min_s": round(min(s[key] for s in samples), 2),
                     "max_s": round(max(s[key] for s in samples), 2)} for key in samples[0]}
    return {"rounds": [{k: round(v, 2) for k, v in s.items()} for s in samples], "summary": summary}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["summary"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, key in enumerate(keys):
        values = [r[key] for r in result["rounds"]]
        ax.scatter([i] * len(values), values, color="tab:blue", alpha=0.6)
        ax.hlines(result["summary"][key]["median_s"], i - 0.25, i + 0.25, color="black")
    ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys])
    ax.set_ylabel("seconds until every replica serves it")
    ax.set_title(f"Adapter set changes, {result['config']['replicas']} replicas (dots: rounds, bar: median)")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    env = {"LORAFLEET_RECONCILE_INTERVAL_S": "0.5", "LORAFLEET_GATEWAY_REFRESH_S": "0.5",
           "LORAFLEET_DRAIN_GRACE_S": "1"}
    with live_controlplane(catalog=SEED_CATALOG, env=env, startup_timeout_s=120) as cp:
        result: dict[str, Any] = {"config": vars(args), **run(cp, args.rounds, args.replicas)}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "live_adapters.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "live_adapters.png")


if __name__ == "__main__":
    main()
