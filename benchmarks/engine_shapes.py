"""`benchmarks/engine.py --shape NAME`: the engine on a real-sized model, against its peers and its bound.

Random weights of a real model's shape (`shapes.py`: smollm2-135m, qwen2.5-0.5b), the three
adapter kinds of issue 18 (r8 q/v; r16 all-linear rsLoRA; r64 o/gate/up/down). 32 requests x 64
new tokens (ignore_eos), ~32-token prompts, two scenarios: `base` (every request on the base)
and `mixed` (8 requests each on the base and the three adapters). Each system first runs both
scenarios' requests for `WARM_UP_TOKENS` tokens, untimed: a process's first large prefill pays
seconds of first-touch allocation on the CPU, once, which would otherwise land on whichever
scenario runs first; and a process's first run on the adapters is slower than its next ones
(three processes, SmolLM2's shape, tokens/s of the first mixed run then the next: 421 / 492, 439 /
443, 441 / 481): the one-time costs of an adapter's first use (the CPU path's slot copies among
them), not throughput; peft loads its adapters before any timing too. The prefix cache
is off in both lorafleet systems: the warm-up would otherwise leave every prompt cached (per
adapter), and the timed runs would skip their prefill (`engine_prefix.py` measures the cache).
Measured, each system in its own process so no two share an OpenMP pool, in interleaved
rounds (a noisy moment on this shared machine hits every system alike), median over rounds:

- engine: `Engine.generate` of the 32 requests at once (one continuous batch);
- server: `python -m lorafleet.runtime`, 32 concurrent `/generate` requests over HTTP;
- peft: transformers + peft, one static batch of 32 (`generate(adapter_names=...)`, greedy,
  exactly 64 new tokens);
- bound: the model's own linear layers (every projection of every layer + the LM head, as
  transformers lays them out) timed alone at batch 32, each in the faster of `F.linear` and the
  engine's measured form (`runtime/layers/dense.py`): tokens/s if a decode step cost nothing else.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NUM_REQUESTS, NEW_TOKENS, PROMPT_TOKENS = 32, 64, 32
WARM_UP_TOKENS = 4
SYSTEMS = ("engine", "server", "peft", "bound")


def prompts_and_adapters(tokenizer_encode, tokenizer_decode) -> dict[str, list]:  # type: ignore[no-untyped-def]
    """The 32 prompts (text of ~32 tokens) and, per scenario, each request's adapter."""
    lines = [line for line in (REPO / "tests" / "fixtures" / "corpus.txt").read_text().splitlines() if line]
    text = " ".join(lines)
    ids = tokenizer_encode(text)
    starts = [i * 53 % max(1, len(ids) - PROMPT_TOKENS) for i in range(NUM_REQUESTS)]
    prompts = [tokenizer_decode(ids[start : start + PROMPT_TOKENS]) for start in starts]
    kinds = [None, "r8-qv", "r16-all-rslora", "r64-o-mlp"]
    return {"prompts": prompts, "base": [None] * NUM_REQUESTS,
            "mixed": [kinds[i % 4] for i in range(NUM_REQUESTS)]}


def shape_engine(shape: str) -> tuple[Any, dict[str, list]]:
    """The engine on `shape`'s random weights with issue 18's three adapters (not started; prefix
    cache off), and `prompts_and_adapters` for its tokenizer: what the in-process benchmarks run."""
    sys.path.insert(0, str(BENCH))
    from lorafleet.runtime.engine import Engine
    from shapes import real_shape_adapters, real_shape_model

    model_dir = real_shape_model(shape)
    adapters = {name: str(path) for name, path in real_shape_adapters(model_dir).items()}
    engine = Engine.from_pretrained(model_dir, adapters=adapters, max_loaded_adapters=4,
                                    prefix_caching=False, progress=lambda _: None)
    return engine, prompts_and_adapters(engine.tokenizer.encode, engine.tokenizer.decode)


def run_worker(system: str, shape: str) -> dict[str, Any]:
    """One system's tokens/s for both scenarios, in this (fresh) process."""
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(REPO))
    from shapes import real_shape_adapters, real_shape_model

    model_dir = real_shape_model(shape)
    adapters = {name: str(path) for name, path in real_shape_adapters(model_dir).items()}
    if system == "engine":
        return _engine(model_dir, adapters)
    if system == "server":
        return _server(model_dir, adapters)
    if system == "peft":
        return _peft(model_dir, adapters)
    return _bound(model_dir)


def _engine(model_dir: Path, adapters: dict[str, str]) -> dict[str, Any]:
    from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams

    engine = Engine.from_pretrained(
        model_dir, adapters=adapters, max_loaded_adapters=4, prefix_caching=False, progress=lambda _: None
    )
    work = prompts_and_adapters(engine.tokenizer.encode, engine.tokenizer.decode)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    out = {}
    with engine:
        warm_up = SamplingParams(max_new_tokens=WARM_UP_TOKENS, ignore_eos=True)
        for scenario in ("base", "mixed"):
            engine.generate([GenerationRequest(p, warm_up, adapter_id=a)
                             for p, a in zip(work["prompts"], work[scenario], strict=True)])
        for scenario in ("base", "mixed"):
            requests = [GenerationRequest(p, params, adapter_id=a)
                        for p, a in zip(work["prompts"], work[scenario], strict=True)]
            start = time.perf_counter()
            results = engine.generate(requests)
            out[scenario] = sum(len(r.tokens) for r in results) / (time.perf_counter() - start)
    return out


def _server(model_dir: Path, adapters: dict[str, str]) -> dict[str, Any]:
    import asyncio

    import httpx
    from serve import start_server
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    work = prompts_and_adapters(lambda t: tokenizer.encode(t).ids, tokenizer.decode)
    process, url = start_server(model_dir, {k: Path(v) for k, v in adapters.items()}, NUM_REQUESTS,
                                ("--prefix-caching", "false"))

    async def scenario(adapter_ids: list[str | None]) -> float:
        async def one(
            client: httpx.AsyncClient, prompt: str, adapter: str | None, tokens: int = NEW_TOKENS
        ) -> int:
            parameters: dict[str, Any] = {"max_new_tokens": tokens, "ignore_eos": True}
            if adapter:
                parameters["adapter_id"] = adapter
            response = await client.post("/generate", json={"inputs": prompt, "parameters": parameters})
            if response.status_code != 200:
                raise RuntimeError(f"/generate answered {response.status_code}: {response.text}")
            return tokens

        limits = httpx.Limits(max_connections=NUM_REQUESTS + 4)
        async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
            await asyncio.gather(*(one(client, p, a, WARM_UP_TOKENS)
                                   for p, a in zip(work["prompts"], adapter_ids, strict=True)))
            start = time.perf_counter()
            counts = await asyncio.gather(*(one(client, p, a) for p, a in zip(work["prompts"], adapter_ids,
                                                                                strict=True)))
            return sum(counts) / (time.perf_counter() - start)

    try:
        return {name: asyncio.run(scenario(work[name])) for name in ("base", "mixed")}
    finally:
        process.terminate()
        process.wait(60)


def _peft(model_dir: Path, adapters: dict[str, str]) -> dict[str, Any]:
    import torch
    from serve import load_peer

    model, tokenizer = load_peer(model_dir, {k: Path(v) for k, v in adapters.items()})
    work = prompts_and_adapters(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
                                lambda ids: tokenizer.decode(ids))
    out = {}
    inputs = tokenizer(work["prompts"], return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        for scenario in ("base", "mixed"):
            model.generate(**inputs, adapter_names=[a or "__base__" for a in work[scenario]],
                           max_new_tokens=WARM_UP_TOKENS, min_new_tokens=WARM_UP_TOKENS, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    for scenario in ("base", "mixed"):
        names = [a or "__base__" for a in work[scenario]]
        start = time.perf_counter()
        with torch.no_grad():
            generated = model.generate(**inputs, adapter_names=names, max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        elapsed = time.perf_counter() - start
        out[scenario] = (generated.shape[1] - inputs["input_ids"].shape[1]) * NUM_REQUESTS / elapsed
    return out


def _bound(model_dir: Path) -> dict[str, Any]:
    """Tokens/s of the linear layers alone: one decode step's matmuls at batch 32, best of 5, each
    shape in the faster of `F.linear` and the form the engine's matmul plan picks for it (measured
    here as an engine measures it at start: oneDNN runs some shapes faster than MKL on some CPUs,
    and a bound that ignored that would flatter the engine)."""
    import torch
    import transformers
    from lorafleet.runtime.layers import dense

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {w.shape[1]: torch.randn(NUM_REQUESTS, w.shape[1]) for w in linears}
    dense.tune(linears)

    def step_seconds(matmul: Any) -> float:
        times = []
        with torch.no_grad():
            for _ in range(6):
                start = time.perf_counter()
                for w in linears:
                    matmul(x[w.shape[1]], w)
                times.append(time.perf_counter() - start)
        return min(times[1:])

    plain, planned = step_seconds(torch.nn.functional.linear), step_seconds(dense.linear)
    step = min(plain, planned)
    return {"base": NUM_REQUESTS / step, "step_ms": step * 1000, "f_linear_step_ms": plain * 1000,
            "planned_step_ms": planned * 1000, "linear_layers": len(linears)}


def run_shape(shape: str, rounds: int) -> dict[str, Any]:
    """Every system once per round, in its own process, rounds interleaved; medians."""
    runs: dict[str, list[dict[str, Any]]] = {system: [] for system in SYSTEMS}
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for _ in range(rounds):
        for system in SYSTEMS:
            done = subprocess.run([sys.executable, str(BENCH / "engine_shapes.py"), system, shape],
                                  env=env, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"{system} worker failed:\n{done.stderr[-3000:]}")
            runs[system].append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {system: {key: statistics.median(run[key] for run in system_runs)
                       for key in system_runs[0]}
              for system, system_runs in runs.items()}
    engine, server, peft, bound = (median[s] for s in SYSTEMS)
    return {
        "benchmark": "engine-real-shape",
        "shape": shape,
        "requests": NUM_REQUESTS,
        "new_tokens": NEW_TOKENS,
        "prompt_tokens": PROMPT_TOKENS,
        "torch_threads": _threads(),
        "tokens_per_s": median,
        "runs": runs,
        "engine_base_over_bound": engine["base"] / bound["base"],
        "server_base_over_bound": server["base"] / bound["base"],
        "engine_mixed_over_base": engine["mixed"] / engine["base"],
        "server_mixed_over_base": server["mixed"] / server["base"],
        "engine_mixed_over_peft": engine["mixed"] / peft["mixed"],
        "server_mixed_over_peft": server["mixed"] / peft["mixed"],
        "targets": {"base_over_bound": 0.7, "mixed_over_base": 0.9, "mixed_over_peft": 1.5},
        "load_average": os.getloadavg()[0],
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":  # a worker: `engine_shapes.py SYSTEM SHAPE` prints one JSON line
    print(json.dumps(run_worker(sys.argv[1], sys.argv[2])))
