"""Serving throughput and latency: ``dllm-jax serve`` under 1, 4 and 16 concurrent clients vs
sequential ``generate`` calls on the same tiny model, in one process.

A random tiny Dream-family model whose vocabulary covers the Qwen2.5 tokenizer is served by
uvicorn in a thread; clients are threads posting ``/v1/completions`` (stdlib HTTP, one request
at a time each, all with distinct prompts). The baseline decodes the same prompts one at a
time with ``generate`` (batch 1, left-padded to the same bucket, the same sampler config).
Compilation is excluded (every program is warmed up first) and the runs are interleaved over
several rounds, so load changes on a shared machine hit them alike. Prints requests/s (median
over rounds), p50/p99 latency, the mean batch size and the throughput ratio to the baseline;
also the streamed time to first block (one client) and the streaming engine call's time over
a plain ``generate`` call.

    python scripts/bench_serve.py [--requests 32] [--rounds 3] [--concurrency 1,4,16] [...]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import uvicorn

from dllm_jax.data.batching import left_pad
from dllm_jax.data.tokenizer import load_tokenizer
from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import init_model
from dllm_jax.sampling import LLaDAConfig, generate
from dllm_jax.serve import Engine, create_app

REPO = Path(__file__).resolve().parents[1]


def post(port: int, body: dict, stream: bool = False) -> tuple[float, float]:
    """Seconds to the first body line and to the end of the response."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": stream}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = None
    while resp.readline():
        first = first or time.perf_counter() - t0
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}")
    return first, time.perf_counter() - t0


def run_clients(port: int, bodies: list[dict], concurrency: int) -> tuple[float, list[float]]:
    """Wall seconds and per-request latencies for ``bodies`` sent by ``concurrency`` clients."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = [end for _, end in pool.map(lambda b: post(port, b), bodies)]
    return time.perf_counter() - t0, lat


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def watch_overhead(engine: Engine, model, prompt: list[int], config: LLaDAConfig) -> float:
    """Median time of the engine's streaming call over plain ``generate`` (batch 1, the same
    padded prompt), interleaved so load changes hit both alike."""
    program = engine.program(len(prompt), None, {})
    ids, mask = left_pad([prompt], engine.pad_id, buckets=(program.bucket,))
    runs = {"engine": lambda: engine.run([prompt], program, 0, lambda k, t: None),
            "generate": lambda: jax.block_until_ready(
                generate(model, ids, mask, config=program.config, key=0).sequences)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(21):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if i:  # the first round compiles
                times[name].append(time.perf_counter() - t0)
    return float(np.median(times["engine"]) / np.median(times["generate"]))


def sequential(model, engine: Engine, prompts: list[list[int]], config: LLaDAConfig
               ) -> tuple[float, list[float]]:
    """The baseline: one ``generate`` call per prompt (batch 1, padded to the server's bucket,
    so one program)."""
    padded = [left_pad([p], engine.pad_id, buckets=engine.prompt_buckets) for p in prompts]
    lat = []
    t0 = time.perf_counter()
    for ids, mask in padded:
        s = time.perf_counter()
        jax.block_until_ready(generate(model, ids, mask, config=config, key=0).sequences)
        lat.append(time.perf_counter() - s)
    return time.perf_counter() - t0, lat


def start_server(engine: Engine) -> tuple[uvicorn.Server, threading.Thread, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(3000):
        if server.started:
            break
        time.sleep(0.01)
    return server, thread, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=str(REPO.parent / "shared/tokenizers/qwen2.5"))
    ap.add_argument("--requests", type=int, default=32, help="requests per run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all runs, interleaved")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"config: {vars(args)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()})")

    tok = load_tokenizer(args.tokenizer)
    model = init_model(ModelConfig(
        family="dream", vocab_size=len(tok) + 1, hidden_size=args.hidden,
        num_layers=args.layers, num_heads=4, num_kv_heads=2, head_dim=args.hidden // 4,
        intermediate_size=2 * args.hidden, qkv_bias=True, max_position_embeddings=512,
        mask_token_id=len(tok), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id), seed=args.seed)
    config = LLaDAConfig(steps=args.steps, gen_length=args.gen_length,
                         block_length=args.block_length)
    engine = Engine(model, tok, name="bench", defaults=config, prompt_buckets=(32,),
                    batch_sizes=[int(b) for b in args.batch_sizes.split(",")])
    texts = [f"Request {i}: write a sentence about the number {i}." for i in range(args.requests)]
    bodies = [{"model": "bench", "prompt": t, "max_tokens": args.gen_length} for t in texts]
    prompts = [tok.encode(t) for t in texts]
    overhead = watch_overhead(engine, model, prompts[0], config)
    server, thread, port = start_server(engine)

    sequential(model, engine, prompts[:1], config)  # warm-up: compiles
    for c in levels:
        run_clients(port, bodies[:max(c, 4)], c)  # warm-up: compiles this level's batch sizes
    names = ["sequential generate"] + [f"serve, {c} client(s)" for c in levels]
    rps: dict[str, list[float]] = {n: [] for n in names}
    lat: dict[str, list[float]] = {n: [] for n in names}
    batch: dict[str, list[float]] = {n: [1.0] for n in names}
    for r in range(args.rounds):
        wall, ls = sequential(model, engine, prompts, config)
        rps[names[0]].append(len(prompts) / wall)
        lat[names[0]] += ls
        for name, c in zip(names[1:], levels, strict=True):
            b0, r0 = engine.batches, engine.rows
            wall, ls = run_clients(port, bodies, c)
            rps[name].append(len(bodies) / wall)
            lat[name] += ls
            batch[name].append((engine.rows - r0) / max(engine.batches - b0, 1))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n.split(', ')[-1]} {rps[n][-1]:.2f} req/s" for n in names))
    first = [post(port, b, stream=True) for b in bodies[:16]]
    server.should_exit = True
    thread.join(60)

    base = float(np.median(rps[names[0]]))
    print(f"{'run (medians over rounds)':<26}{'req/s':>8}{'tok/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'batch':>7}{'vs generate':>13}")
    for n in names:
        med = float(np.median(rps[n]))
        print(f"{n:<26}{med:>8.2f}{med * args.gen_length:>9.1f}{pct(lat[n], 50):>9.1f}"
              f"{pct(lat[n], 99):>9.1f}{np.mean(batch[n][1:] or [1.0]):>7.1f}"
              f"{med / base:>13.2f}")
    print(f"streaming engine call vs generate, batch 1, median of 20 interleaved: "
          f"{overhead:.3f}x")
    print(f"streamed, 1 client: first block p50 {pct([f for f, _ in first], 50):.1f} ms, "
          f"whole response p50 {pct([e for _, e in first], 50):.1f} ms")


if __name__ == "__main__":
    main()
