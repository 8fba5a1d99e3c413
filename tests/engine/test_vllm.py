"""``mogu serve --engine`` on a real vLLM (CPU build, its own venv, started by scripts/engine.sh).

One engine start per session; short answers. The bundle is the default model with untrained routers and
slightly perturbed experts, so that its routed tokens differ from the plain model's: the engine must continue
from them, not decode them again. vLLM computes in bfloat16 here and mogu in float32, so only the routed
tokens must agree with the in-process answer; the last test kills the engine mid-answer.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from mogu.engine import EngineConfig, EngineMismatchError
from mogu.engine.client import check_engine
from mogu.model import MoGUModel
from mogu.model.config import DecodingConfig
from tests.support.servers import wait_until_up

pytestmark = [pytest.mark.engine, pytest.mark.integration]

QUESTION = [{"role": "user", "content": "How do I bake bread at home?"}]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mogu_on_vllm(vllm_engine, default_bundle: Path, tmp_path_factory) -> Iterator[str]:
    """``mogu serve BUNDLE --engine URL`` as its own process; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mogu", "serve", str(default_bundle), "--port", str(port), "--dtype", "float32",
             "--engine", vllm_engine.url], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, f"{url}/health", 180, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def api(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def test_a_bundle_on_another_base_model_is_refused_at_start(vllm_engine, tiny_bundle):
    result = subprocess.run([sys.executable, "-m", "mogu", "serve", str(tiny_bundle), "--port", "0",
                             "--engine", vllm_engine.url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "tokenises text differently" in result.stderr


def test_check_finds_token_id_prompts_on_vllm(vllm_engine, tiny_mogu):
    info = asyncio.run(check_engine(EngineConfig(url=vllm_engine.url), _default_tokenizer()))
    assert (info.model, info.prompt_format, info.extensions, info.max_model_len) == (vllm_engine.name, "token_ids",
                                                                                     True, 2048)
    with pytest.raises(EngineMismatchError):
        asyncio.run(check_engine(EngineConfig(url=vllm_engine.url), tiny_mogu.tokenizer))


def _default_tokenizer():
    from transformers import AutoTokenizer

    from mogu.model.loading import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("default"))


def test_answers_streamed_and_not_continue_the_routed_tokens(mogu_on_vllm, default_bundle):
    client = api(mogu_on_vllm)
    answer = client.chat.completions.create(model="x", messages=QUESTION, max_tokens=24)
    chunks = list(client.chat.completions.create(model="x", messages=QUESTION, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content
    assert answer.usage.completion_tokens == chunks[-1].usage.completion_tokens
    assert answer.usage.completion_tokens <= 24

    model = MoGUModel.from_pretrained(default_bundle)
    [local] = model.generate([QUESTION], DecodingConfig(max_new_tokens=24))
    routed = model.tokenizer.decode(local.token_ids[: local.routed_tokens], skip_special_tokens=True)
    assert answer.choices[0].message.content.startswith(routed)
    assert answer.usage.prompt_tokens == local.prompt_tokens


def test_health_reports_vllm(mogu_on_vllm):
    health = httpx.get(f"{mogu_on_vllm}/health", timeout=10).json()
    assert health["status"] == "ok" and health["engine"]["status"] == "ok"


def test_engine_killed_mid_stream_ends_the_answer_with_an_error(mogu_on_vllm, vllm_engine):
    """Last: it kills the session's engine."""
    essay = [{"role": "user", "content": "Write a long, detailed essay on the history of bread, in many parts."}]
    stream = api(mogu_on_vllm).chat.completions.create(model="x", messages=essay, max_tokens=1000, stream=True)
    started = time.monotonic()
    finishes = []
    with pytest.raises(openai.APIError, match="engine"):
        for n, chunk in enumerate(stream):
            finishes.append(chunk.choices[0].finish_reason if chunk.choices else None)
            if n == 1:
                vllm_engine.kill()
    assert all(f is None for f in finishes), "a broken answer was reported as complete"
    assert time.monotonic() - started < 60
    down = httpx.get(f"{mogu_on_vllm}/health", timeout=10)
    assert down.status_code == 503 and down.json()["engine"]["status"] == "unreachable"
    with pytest.raises(openai.APIStatusError) as caught:
        api(mogu_on_vllm).chat.completions.create(model="x", messages=QUESTION, max_tokens=24)
    assert caught.value.status_code == 503
