"""Throughput and latency of ``mogu serve`` at 1, 8 and 32 concurrent clients.

Starts a server on a free loopback port (``mogu serve TARGET``), sends the
same fixed number of non-streaming greedy requests at each concurrency level,
and prints JSON on stdout: requests/s, completion tokens/s, p50/p95 latency,
the mean batch the server formed, and throughput(8) / throughput(1), which
shows what batching buys. Progress goes to stderr.

    python benchmarks/bench_serve.py                      # the embedded default model
    python benchmarks/bench_serve.py --target BUNDLE --requests 64 --max-tokens 32
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --api-key KEY   # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import httpx

PROMPTS = [
    "Give me three tips for a good night's sleep.",
    "How do I bake bread at home?",
    "Write a short poem about the sea.",
    "Explain what a Python list comprehension is.",
    "What is the capital of France, and why is it famous?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "How can I improve my handwriting?",
    "What are the health benefits of walking every day?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), rounded to milliseconds; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1], 3)


def throughput(concurrency: int, requests: int, latencies: list[float], failures: int, elapsed: float,
               tokens: int) -> dict:
    """What one level of concurrent clients measured (``latencies`` of the requests that succeeded)."""
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(latencies),
        "failures": failures,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 2),
        "completion_tokens": tokens,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
    }


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-c", "from mogu.cli import app; app()", "serve", args.target, "--port", str(port),
               "--max-batch-size", str(args.max_batch_size), "--max-queue", str(max(64, 2 * max(args.concurrency))),
               "--max-tokens-limit", str(max(args.max_tokens, 1))]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"server did not start within {args.startup_timeout} s:\n{log_path.read_text()}")


async def run_level(url: str, headers: dict[str, str], concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """``requests`` requests from ``concurrency`` clients, each sending its next request when the last returns."""
    latencies: list[float] = []
    tokens = 0
    failures: dict[str, int] = {}
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in counter:
            payload = {"model": "bench", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                       "max_tokens": max_tokens, "temperature": 0}
            start = time.perf_counter()
            try:
                response = await http.post("/v1/chat/completions", json=payload)
            except httpx.HTTPError as err:
                failures[type(err).__name__] = failures.get(type(err).__name__, 0) + 1
                continue
            if response.status_code != 200:
                failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
                continue
            latencies.append(time.perf_counter() - start)
            tokens += response.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as http:
        before = (await http.get("/health")).json().get("stats", {})
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = (await http.get("/health")).json().get("stats", {})
    batches = after.get("batches", 0) - before.get("batches", 0)
    jobs = after.get("batched_jobs", 0) - before.get("batched_jobs", 0)
    return {**throughput(concurrency, requests, latencies, failures, elapsed, tokens),
            "mean_batch": round(jobs / batches, 2) if batches else None}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="default", help="bundle or base model to serve (default: the embedded one)")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--api-key", default=None, help="API key of the server given by --url")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                        help="comma-separated client counts (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=8, help="server's --max-batch-size")
    parser.add_argument("--threads", type=int, default=None, help="server's --threads (torch CPU threads)")
    parser.add_argument("--startup-timeout", type=float, default=300)
    args = parser.parse_args(argv)

    process = None
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    log_path = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "server.log"
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            started = time.perf_counter()
            process, url = start_server(args, log_path)
            print(f"server up in {time.perf_counter() - started:.1f} s (log: {log_path})", file=sys.stderr)
        warm = asyncio.run(run_level(url, headers, 1, 2, args.max_tokens))  # first calls pay one-off costs
        if warm["ok"] == 0:
            raise SystemExit(f"warm-up requests failed: {warm['failures']}")
        levels = []
        for concurrency in args.concurrency:
            level = asyncio.run(run_level(url, headers, concurrency, args.requests, args.max_tokens))
            print(f"concurrency {concurrency}: {level['requests_per_s']} req/s, {level['tokens_per_s']} tok/s, "
                  f"p50 {level['latency_p50_s']} s, p95 {level['latency_p95_s']} s", file=sys.stderr)
            levels.append(level)
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    by_level = {level["concurrency"]: level for level in levels}
    ratio = None
    if 1 in by_level and 8 in by_level and by_level[1]["requests_per_s"]:
        ratio = round(by_level[8]["requests_per_s"] / by_level[1]["requests_per_s"], 2)
    report = {
        "target": args.url or args.target,
        "max_tokens": args.max_tokens,
        "requests_per_level": args.requests,
        "max_batch_size": args.max_batch_size,
        "threads": args.threads,
        "levels": levels,
        "throughput_ratio_8_over_1": ratio,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
