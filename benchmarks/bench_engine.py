"""``mogu serve`` alone, ``mogu serve --engine`` on vLLM, and vLLM alone serving the plain model, in one run.

On one machine, at 1, 8 and 32 concurrent clients, each sending streamed greedy chat requests for fixed-length
answers (EOS ignored before ``--max-tokens``, so that every system writes the same number of tokens): requests/s,
completion tokens/s, p50/p95 latency and time to first token. Then the greedy agreement of in-process answers
(faithful hand-over, the bundle's dtype) and engine answers on the benchmark prompts: whether the routed tokens
agree (they must) and where the rest parts (vLLM's CPU build computes in bfloat16). Prints JSON on stdout;
progress goes to stderr. vLLM is started through scripts/engine.sh and stopped at the end (or given by
``--engine-url``). Before vLLM starts, the front-end's own capacity is measured too: ``mogu serve`` answering
only the routed tokens (``front_end_routed_phase_only``), what it does per request in front of an engine.

    python benchmarks/bench_engine.py                         # a bundle on the default model, built here
    python benchmarks/bench_engine.py --threads 1 --max-batch-size 32   # docs/deploy.md's figures
    python benchmarks/bench_engine.py --target BUNDLE --concurrency 1,8,32 --max-tokens 128

Without ``--target``, the bundle is the default model with untrained routers and slightly perturbed experts:
what is measured (routing cost, hand-over, engine throughput, agreement of the routed tokens) does not depend
on what the routers learnt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import httpx

from bench_serve import PROMPTS, free_port, percentile, throughput  # run from benchmarks/, as the scripts import each other

REPO = Path(__file__).resolve().parents[1]


def wait_until_up(process: subprocess.Popen, url: str, path: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(process)
    raise SystemExit(f"{url} did not start within {timeout} s:\n{log_path.read_text()[-3000:]}")


def stop(process: Optional[subprocess.Popen]) -> None:
    """Stop a server started here (its whole process group: vLLM has child processes)."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def start_mogu(args: argparse.Namespace, target: str, logs: Path, engine: Optional[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "mogu", "serve", target, "--port", str(port), "--dtype", args.dtype,
               "--max-batch-size", str(args.max_batch_size), "--max-queue", str(max(64, 2 * max(args.concurrency))),
               "--max-tokens-limit", str(args.max_tokens)]
    threads = args.engine_threads if engine else args.threads
    if threads:
        command += ["--threads", str(threads)]
    if engine:
        command += ["--engine", engine]
    log_path = logs / ("mogu-engine.log" if engine else "mogu.log")
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_until_up(process, url, "/health", args.startup_timeout, log_path)
    return process, url


def start_vllm(args: argparse.Namespace, logs: Path) -> tuple[subprocess.Popen, str, str]:
    from mogu.model.loading import resolve_model_path

    install = subprocess.run([str(REPO / "scripts" / "engine.sh"), "install"], capture_output=True, text=True)
    if install.returncode != 0:
        raise SystemExit(f"vLLM could not be installed:\n{install.stderr[-2000:]}")
    port, name = free_port(), "base"
    log_path = logs / "vllm.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(REPO / "scripts" / "engine.sh"), "serve", "--model", resolve_model_path(args.base), "--name", name,
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(process, url, "/v1/models", args.engine_timeout, log_path)
    return process, url, name


async def run_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int, mogu: bool) -> dict[str, Any]:
    """``requests`` streamed requests from ``concurrency`` clients, each sending its next when the last ends."""
    latencies: list[float] = []
    first_tokens: list[float] = []
    tokens = 0
    failures: dict[str, int] = {}
    counter = iter(range(requests))
    # every system writes exactly max_tokens tokens: EOS is ignored until then
    fixed = {"mogu": {"min_tokens": max_tokens}} if mogu else {"min_tokens": max_tokens}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in counter:
            payload = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}, **fixed}
            start = time.perf_counter()
            first: Optional[float] = None
            usage = None
            try:
                async with http.stream("POST", "/v1/chat/completions", json=payload) as response:
                    if response.status_code != 200:
                        failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
                        continue
                    async for line in response.aiter_lines():
                        if not line.startswith("data:") or line.endswith("[DONE]"):
                            continue
                        event = json.loads(line[5:])
                        if "error" in event:
                            raise RuntimeError(event["error"].get("message"))
                        if first is None and any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                            first = time.perf_counter() - start
                        usage = event.get("usage") or usage
            except (httpx.HTTPError, RuntimeError) as err:
                failures[type(err).__name__] = failures.get(type(err).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)
            if first is not None:
                first_tokens.append(first)
            tokens += usage["completion_tokens"] if usage else 0

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {**throughput(concurrency, requests, latencies, failures, elapsed, tokens),
            "ttft_p50_s": percentile(first_tokens, 50), "ttft_p95_s": percentile(first_tokens, 95)}


def measure(name: str, url: str, model: str, args: argparse.Namespace, mogu: bool) -> list[dict[str, Any]]:
    asyncio.run(run_level(url, model, 1, 2, args.max_tokens, mogu))  # first calls pay one-off costs
    levels = []
    for concurrency in args.concurrency:
        requests = args.requests or max(8, concurrency)
        level = asyncio.run(run_level(url, model, concurrency, requests, args.max_tokens, mogu))
        print(f"{name}, {concurrency} clients: {level['requests_per_s']} req/s, {level['tokens_per_s']} tok/s, "
              f"p50 {level['latency_p50_s']} s, ttft p50 {level['ttft_p50_s']} s, failures {level['failures']}",
              file=sys.stderr)
        levels.append(level)
    return levels


def build_bundle(base: str, folder: Path) -> str:
    """The default model with untrained routers and slightly perturbed experts (routes 12 tokens)."""
    import torch

    from mogu.model import MoGUModel

    model = MoGUModel.from_base(base, routed_tokens=12)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.layers:
            for p in layer.lora_B.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(folder)
    return str(folder)


def agreement(target: str, engine_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy in-process answers (faithful hand-over) against the same routed phase handed to the engine."""
    from mogu.model.config import DecodingConfig
    from mogu.engine import EngineConfig
    from mogu.engine.handover import EngineGenerator
    from mogu.model import MoGUModel

    model = MoGUModel.load(target, dtype=args.dtype)
    decoding = DecodingConfig(max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens)
    local = [model.generate([p], decoding)[0] for p in PROMPTS]  # one at a time: no padding
    remote = EngineGenerator(model, EngineConfig(url=engine_url))(PROMPTS, decoding)
    rows = []
    for prompt, a, b in zip(PROMPTS, local, remote):
        parted = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), None)
        if parted is None and len(a.token_ids) != len(b.token_ids):
            parted = min(len(a.token_ids), len(b.token_ids))
        rows.append({"prompt": prompt, "routed_tokens": a.routed_tokens,
                     "routed_agree": a.token_ids[: a.routed_tokens] == b.token_ids[: a.routed_tokens],
                     "identical": parted is None, "parts_at_token": parted, "tokens": len(a.token_ids)})
    parts = [r["parts_at_token"] for r in rows if r["parts_at_token"] is not None]
    return {
        "in_process_dtype": str(model.base_model.dtype).removeprefix("torch."),
        "engine_dtype": "bfloat16 (vLLM CPU build, auto)",
        "routed_tokens_agree": all(r["routed_agree"] for r in rows),
        "identical_answers": sum(r["identical"] for r in rows),
        "answers": len(rows),
        "first_difference_token_median": sorted(parts)[len(parts) // 2] if parts else None,
        "per_prompt": rows,
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=None, help="bundle to serve (default: one built on --base here)")
    parser.add_argument("--base", default="default", help="base model of the built bundle and of the engine")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: max(8, clients))")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-batch-size", type=int, default=8, help="mogu serve's --max-batch-size")
    parser.add_argument("--threads", type=int, default=None, help="mogu serve's --threads when alone")
    parser.add_argument("--engine-threads", type=int, default=1,
                        help="mogu serve's --threads in front of the engine (vLLM binds its worker to one core)")
    parser.add_argument("--dtype", default="auto", help="mogu's --dtype")
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("--engine-timeout", type=float, default=900, help="wait for vLLM (the first start compiles)")
    parser.add_argument("--engine-url", default=None, help="a running vLLM serving the base model (else started here)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: alone,engine,vllm,agreement")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}

    logs = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    print(f"logs in {logs}", file=sys.stderr)
    target = args.target or build_bundle(args.base, logs / "bundle")
    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "target": args.target or f"{args.base} with untrained routers (built here)",
        "max_tokens": args.max_tokens, "max_batch_size": args.max_batch_size, "threads": args.threads,
        "engine_threads": args.engine_threads,
        "dtype": args.dtype,
    }
    mogu = vllm = None
    try:
        if "alone" not in skip:
            mogu, url = start_mogu(args, target, logs, None)
            report["mogu_alone"] = measure("mogu serve", url, "mogu", args, mogu=True)
            # what a front-end does per request with an engine behind it: prefill + the routed tokens
            clients = max(args.concurrency)
            routed = json.loads((Path(target) / "mogu_config.json").read_text())["config"]["routed_tokens"]
            report["front_end_routed_phase_only"] = asyncio.run(run_level(
                url, "mogu", clients, max(8, 2 * clients), routed, mogu=True))
            stop(mogu)
        if args.engine_url:
            engine_url, name = args.engine_url, httpx.get(f"{args.engine_url}/v1/models").json()["data"][0]["id"]
        else:
            vllm, engine_url, name = start_vllm(args, logs)
        if "vllm" not in skip:
            report["vllm_alone"] = measure("vLLM alone", engine_url, name, args, mogu=False)
        if "engine" not in skip:
            mogu, url = start_mogu(args, target, logs, engine_url)
            report["mogu_engine"] = measure("mogu serve --engine", url, "mogu", args, mogu=True)
            stop(mogu)
        if "agreement" not in skip:
            report["agreement"] = agreement(target, engine_url, args)
    finally:
        stop(mogu)
        stop(vllm)
    ratios = {}
    for level in args.concurrency:
        rate = {key: next((x["requests_per_s"] for x in report.get(key, []) if x["concurrency"] == level), None)
                for key in ("mogu_alone", "mogu_engine", "vllm_alone")}
        if rate["mogu_engine"] and rate["mogu_alone"]:
            ratios[f"engine_over_alone_{level}"] = round(rate["mogu_engine"] / rate["mogu_alone"], 2)
        if rate["mogu_engine"] and rate["vllm_alone"]:
            ratios[f"engine_over_vllm_{level}"] = round(rate["mogu_engine"] / rate["vllm_alone"], 2)
    report["ratios"] = ratios
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
