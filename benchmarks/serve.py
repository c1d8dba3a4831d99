"""Serving benchmark: the runtime over HTTP vs. transformers + peft static batches, N adapters.

One `python -m lorafleet.runtime` serves the demo-size tiny Mistral with 128 preloaded adapters
(`tests.fixtures.tiny_adapter`, one seed each). For each N in {1, 8, 32, 128} an asyncio +
httpx load generator keeps `--concurrency` streaming requests in flight (`/generate_stream`);
request i picks adapter k of the first N with Zipf probability ∝ 1/k. Prompts are ≈ 2× the
output (the seed article's 450 in / 234 out, scaled down); every request generates exactly
`--new-tokens` tokens (`ignore_eos`), so both systems do the same work.

The peer runs the same requests in this process: `transformers` + `peft` with all adapters
loaded, static batches of `--concurrency` requests, `generate(..., adapter_names=[...])`.

Reported per system and N: requests/s, output tokens/s, TTFT and TPOT p50/p99 (the peer has
no streaming: its TTFT is its batch's latency, its TPOT that latency over the tokens). The
lorafleet runs are short, so they are repeated in rounds over N and the median run is kept.
JSON on stdout; JSON + PNG under benchmarks/results/.

    python benchmarks/serve.py --quick          # a couple of minutes on 2 CPU cores
    python benchmarks/serve.py                  # more requests, longer outputs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures import CORPUS, AdapterSpec, tiny_adapter, tiny_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
ADAPTER_COUNTS = (1, 8, 32, 128)


@dataclass(frozen=True)
class Workload:
    prompts: list[str]  # one per request
    adapters: list[str]  # adapter id per request
    new_tokens: int


@dataclass(frozen=True)
class Figures:
    system: str
    num_adapters: int
    num_requests: int
    wall_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def figures(system: str, n: int, wall: float, ttfts: list[float], tpots: list[float], tokens: int) -> Figures:
    return Figures(
        system,
        n,
        len(ttfts),
        wall,
        len(ttfts) / wall,
        tokens / wall,
        percentile(ttfts, 50),
        percentile(ttfts, 99),
        percentile(tpots, 50),
        percentile(tpots, 99),
    )


# --- workload --------------------------------------------------------------------------------


def build_adapters(model_dir: Path, count: int) -> dict[str, Path]:
    spec = dict(r=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), lora_alpha=16)
    return {f"a{i:03d}": tiny_adapter(model_dir, AdapterSpec(**spec, seed=1000 + i)) for i in range(count)}


def make_workload(
    model_dir: Path, adapter_ids: list[str], n: int, num_requests: int, new_tokens: int, seed: int
) -> Workload:
    """Prompts of ≈ 2 × `new_tokens` tokens from the corpus; adapters drawn Zipf(1) from the first n."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rng = random.Random(seed)
    lines = [line for line in CORPUS.read_text().splitlines() if line.strip()]
    prompts = []
    for _ in range(num_requests):
        ids: list[int] = []
        while len(ids) < 2 * new_tokens:
            ids += tokenizer.encode(rng.choice(lines) + " ", add_special_tokens=False).ids
        prompts.append(tokenizer.decode(ids[: 2 * new_tokens - 1]))  # + BOS = 2 × new_tokens
    weights = [1 / (k + 1) for k in range(n)]
    chosen = rng.choices(adapter_ids[:n], weights=weights, k=num_requests)
    return Workload(prompts, chosen, new_tokens)


# --- lorafleet over HTTP ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    model_dir: Path, adapters: dict[str, Path], concurrency: int, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "LORA_ADAPTERS": ",".join(f"{k}={v}" for k, v in adapters.items()),
    }
    args = [
        sys.executable,
        "-m",
        "lorafleet.runtime",
        "--model-id",
        str(model_dir),
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-loaded-adapters",
        str(max(len(adapters), 1)),
        "--max-concurrent-requests",
        str(concurrency * 4),
        "--log-level",
        "warning",
        *extra_args,
    ]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the runtime exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the runtime did not become healthy")


async def one_stream(
    client: httpx.AsyncClient, prompt: str, adapter: str, new_tokens: int
) -> tuple[float, float, int]:
    """(ttft, tpot, tokens) of one `/generate_stream` request."""
    body = {
        "inputs": prompt,
        "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True, "adapter_id": adapter},
    }
    start = time.perf_counter()
    first = last = None
    count = 0
    tail = b""
    async with client.stream("POST", "/generate_stream", json=body) as response:
        response.raise_for_status()
        # Lean on purpose (the client shares the CPUs with the server): count whole events in
        # the raw bytes instead of splitting lines and parsing every event's JSON.
        async for chunk in response.aiter_raw():
            tail += chunk
            events = tail.count(b"\n\n")
            if not events:
                continue
            if b'data: {"error"' in tail:
                raise RuntimeError(tail.decode(errors="replace"))
            tail = tail[tail.rfind(b"\n\n") + 2 :]
            last = time.perf_counter()
            first = first or last
            count += events
    assert first is not None and last is not None
    return first - start, (last - first) / max(count - 1, 1), count


async def drive_server(
    url: str, work: Workload, concurrency: int
) -> tuple[float, list[float], list[float], int]:
    queue = list(zip(work.prompts, work.adapters, strict=True))
    ttfts: list[float] = []
    tpots: list[float] = []
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            prompt, adapter = queue.pop(0)
            ttft, tpot, count = await one_stream(client, prompt, adapter, work.new_tokens)
            ttfts.append(ttft)
            tpots.append(tpot)
            tokens += count

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - start, ttfts, tpots, tokens


# --- the peer: transformers + peft, static batches -------------------------------------------


def load_peer(model_dir: Path, adapters: dict[str, Path]):  # type: ignore[no-untyped-def]
    import torch
    import transformers
    from peft import PeftModel

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    names = list(adapters)
    model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    return model, tokenizer


def drive_peer(
    model, tokenizer, work: Workload, batch_size: int
) -> tuple[float, list[float], list[float], int]:  # type: ignore[no-untyped-def]
    import torch

    ttfts: list[float] = []
    tpots: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(work.prompts), batch_size):
        batch_start = time.perf_counter()
        prompts, names = work.prompts[i : i + batch_size], work.adapters[i : i + batch_size]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                adapter_names=names,
                max_new_tokens=work.new_tokens,
                min_new_tokens=work.new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        latency = time.perf_counter() - batch_start
        generated = out.shape[1] - inputs["input_ids"].shape[1]
        tokens += generated * len(prompts)
        ttfts += [latency] * len(prompts)
        tpots += [latency / generated] * len(prompts)
    return time.perf_counter() - start, ttfts, tpots, tokens


# --- main ------------------------------------------------------------------------------------


def plot(results: list[Figures], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for system in ("lorafleet", "transformers+peft"):
        rows = [r for r in results if r.system == system]
        ax.plot(
            [r.num_adapters for r in rows], [r.output_tokens_per_s for r in rows], marker="o", label=system
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("adapters in the request mix (Zipf)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Serving throughput vs. number of adapters (CPU, demo model)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter requests (a couple of minutes)")
    parser.add_argument("--requests", type=int, help="requests per N (default 128, quick 64)")
    parser.add_argument("--new-tokens", type=int, help="output tokens per request (default 32, quick 16)")
    parser.add_argument(
        "--concurrency", type=int, help="requests in flight / peer batch size (default 32, quick 16)"
    )
    parser.add_argument(
        "--repeats", type=int, help="rounds of the lorafleet runs, median kept (default 5, quick 3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.requests = args.requests or (64 if args.quick else 128)
    args.new_tokens = args.new_tokens or (16 if args.quick else 32)
    args.concurrency = args.concurrency or (16 if args.quick else 32)
    args.repeats = args.repeats or (3 if args.quick else 5)
    return args


def main() -> None:
    args = parse_args()
    model_dir = tiny_model("mistral", size="demo")
    adapters = build_adapters(model_dir, max(ADAPTER_COUNTS))
    ids = list(adapters)
    workloads = {
        n: make_workload(model_dir, ids, n, args.requests, args.new_tokens, args.seed + n)
        for n in ADAPTER_COUNTS
    }
    results: list[Figures] = []
    process, url = start_server(model_dir, adapters, args.concurrency)
    try:
        asyncio.run(drive_server(url, workloads[8], args.concurrency))  # warm-up
        runs: dict[int, list[Figures]] = {n: [] for n in ADAPTER_COUNTS}
        for _ in range(args.repeats):  # rounds alternate over N so machine load hits them alike
            for n in ADAPTER_COUNTS:
                wall, ttfts, tpots, tokens = asyncio.run(drive_server(url, workloads[n], args.concurrency))
                runs[n].append(figures("lorafleet", n, wall, ttfts, tpots, tokens))
        for n in ADAPTER_COUNTS:  # the median run by throughput
            results.append(sorted(runs[n], key=lambda f: f.output_tokens_per_s)[len(runs[n]) // 2])
            rates = ", ".join(f"{f.output_tokens_per_s:.0f}" for f in runs[n])
            print(f"lorafleet N={n}: {rates} tok/s", file=sys.stderr)
    finally:
        process.terminate()
        process.wait(timeout=60)
    model, tokenizer = load_peer(model_dir, adapters)
    drive_peer(
        model, tokenizer, Workload(workloads[8].prompts[:4], workloads[8].adapters[:4], 2), 4
    )  # warm-up
    for n in ADAPTER_COUNTS:
        wall, ttfts, tpots, tokens = drive_peer(model, tokenizer, workloads[n], args.concurrency)
        results.append(figures("transformers+peft", n, wall, ttfts, tpots, tokens))
        print(f"peer N={n}: {results[-1].output_tokens_per_s:.0f} tok/s", file=sys.stderr)
    report = summarize(results, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"serve-cpu{suffix}.json").write_text(json.dumps(report, indent=2))
    plot(results, RESULTS / f"serve-cpu{suffix}.png")
    print(json.dumps(report, indent=2))


def summarize(results: list[Figures], args: argparse.Namespace) -> dict:
    def tps(system: str, n: int) -> float:
        return next(r.output_tokens_per_s for r in results if r.system == system and r.num_adapters == n)

    return {
        "config": {
            "quick": args.quick,
            "requests_per_n": args.requests,
            "new_tokens": args.new_tokens,
            "prompt_tokens": 2 * args.new_tokens,
            "concurrency": args.concurrency,
            "zipf_s": 1.0,
            "model": "tiny mistral, demo size",
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "results": [asdict(r) for r in results],
        "targets": {
            "speedup_vs_peer_at_32": tps("lorafleet", 32) / tps("transformers+peft", 32),
            "throughput_128_over_1": tps("lorafleet", 128) / tps("lorafleet", 1),
        },
    }


if __name__ == "__main__":
    main()
