"""The engine client against the fake engine: the start-up check, retries, and every fault ending in an
``EngineError`` with the right status within a bounded time."""

from __future__ import annotations

import asyncio
import time

import pytest
from transformers import AutoTokenizer

from mogu.engine import EngineClient, EngineConfig, EngineError, EngineMismatchError
from mogu.engine.client import check_engine


def run(coro):
    return asyncio.run(coro)


async def _stream(config: EngineConfig, info, body=None) -> list:
    async with EngineClient(config, info) as client:
        body = body or {"prompt": [5, 6, 7], "max_tokens": 6, "temperature": 0.0, "return_token_ids": True}
        return [chunk async for chunk in client.stream_completion(body)]


def timed_error(coro) -> tuple[EngineError, float]:
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        run(coro)
    return caught.value, time.monotonic() - started


def test_check_finds_model_context_and_token_id_prompts(engine_config, fake_engine, tiny_tokenizer):
    info = run(check_engine(engine_config, tiny_tokenizer))
    assert (info.model, info.max_model_len) == (fake_engine.name, fake_engine.context)
    assert (info.prompt_format, info.extensions) == ("token_ids", True)


def test_check_falls_back_to_text_when_token_ids_are_refused(engine_config, fake_engine, tiny_tokenizer):
    fake_engine.accept_ids = False
    info = run(check_engine(engine_config, tiny_tokenizer))
    assert (info.prompt_format, info.extensions) == ("text", False)


def test_check_refuses_another_tokenizer(engine_config, fake_engine, tiny_tokenizer):
    fake_engine.other_tokenizer = True
    with pytest.raises(EngineMismatchError, match="tokenises text differently"):
        run(check_engine(engine_config, tiny_tokenizer))


def test_check_refuses_a_smaller_vocabulary(engine_config, tiny_model_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])  # one token more than the engine's
    tokenizer.add_tokens(["<extra-token>"])
    with pytest.raises(EngineMismatchError, match="vocabulary"):
        run(check_engine(engine_config, tokenizer))


def test_check_refuses_a_model_the_engine_does_not_serve(engine_config, tiny_tokenizer):
    with pytest.raises(EngineMismatchError, match="does not serve 'other'"):
        run(check_engine(engine_config.model_copy(update={"model": "other"}), tiny_tokenizer))


def test_check_gives_up_on_an_unreachable_engine_in_bounded_time(dead_url, tiny_tokenizer):
    config = EngineConfig(url=dead_url, startup_timeout_s=1.0, connect_timeout_s=0.5)
    err, took = timed_error(check_engine(config, tiny_tokenizer))
    assert err.status == 503 and "cannot reach the engine" in str(err)
    assert took < 5


@pytest.fixture
def info(engine_config, fake_engine, tiny_tokenizer):
    checked = run(check_engine(engine_config, tiny_tokenizer))
    fake_engine.requests.clear()  # the check's probe
    return checked


def test_stream_relays_token_ids_and_usage(engine_config, info, fake_engine):
    chunks = run(_stream(engine_config, info))
    ids = [t for c in chunks for t in (c.token_ids or [])]
    assert ids == fake_engine.continuation([5, 6, 7], 6, [fake_engine.tokenizer.eos_token_id])
    assert chunks[-1].usage["completion_tokens"] == len(ids)
    assert fake_engine.requests[-1]["model"] == fake_engine.name and fake_engine.requests[-1]["stream"] is True


@pytest.mark.parametrize("script", [["503", "500"], ["close"], ["slow"]])
def test_failures_before_streaming_are_retried(engine_config, info, fake_engine, script):
    fake_engine.script = list(script)
    fake_engine.slow_s = 1.5  # beyond the 1 s read timeout
    chunks = run(_stream(engine_config, info))
    assert chunks and len(fake_engine.requests) == len(script) + 1


@pytest.mark.parametrize(("script", "status", "code"), [
    (["500"] * 3, 502, "engine_error"),
    (["503"] * 3, 503, "engine_unavailable"),
    (["slow"] * 3, 504, "engine_timeout"),
])
def test_retries_are_bounded(engine_config, info, fake_engine, script, status, code):
    fake_engine.script = list(script)
    fake_engine.slow_s = 1.5
    err, took = timed_error(_stream(engine_config, info))
    assert (err.status, err.code) == (status, code)
    assert len(fake_engine.requests) == engine_config.retries + 1
    assert took < 3 * (engine_config.read_timeout_s + 0.5) + 1


def test_a_rejected_request_is_not_retried(engine_config, info, fake_engine):
    fake_engine.script = ["400"]
    err, _ = timed_error(_stream(engine_config, info))
    assert (err.status, err.code, len(fake_engine.requests)) == (400, "engine_rejected", 1)


@pytest.mark.parametrize(("script", "status", "code"), [
    (["cut"], 502, "engine_stream_broken"),
    (["stall"], 504, "engine_timeout"),
    (["error-event"], 502, "engine_error"),
])
def test_failures_mid_stream_end_the_answer_without_retry(engine_config, info, fake_engine, script, status, code):
    fake_engine.script = list(script)
    fake_engine.slow_s = 3.0
    err, took = timed_error(_stream(engine_config, info))
    assert (err.status, err.code, len(fake_engine.requests)) == (status, code, 1)
    assert took < engine_config.read_timeout_s + 1.5


def test_unreachable_engine_fails_fast_after_bounded_retries(info, dead_url):
    config = EngineConfig(url=dead_url, connect_timeout_s=0.5, retries=2, backoff_s=0.05)
    err, took = timed_error(_stream(config, info))
    assert (err.status, err.code) == (503, "engine_unavailable")
    assert took < 3


def test_total_time_limit_bounds_a_slow_trickle(engine_config, info, fake_engine):
    fake_engine.token_delay_s = 0.3
    config = engine_config.model_copy(update={"total_timeout_s": 0.8})
    err, took = timed_error(_stream(config, info, {"prompt": [5, 6], "max_tokens": 20, "temperature": 0.0}))
    assert (err.status, err.code) == (504, "engine_timeout")
    assert took < 3


def test_health_reports_ok_error_and_unreachable(engine_config, info, fake_engine, dead_url):
    async def probe(config):
        async with EngineClient(config, info) as client:
            return await client.health()

    assert run(probe(engine_config))["status"] == "ok"
    fake_engine.healthy = False
    assert run(probe(engine_config))["status"] == "error"
    gone = engine_config.model_copy(update={"url": dead_url})
    assert run(probe(gone))["status"] == "unreachable"


def test_config_takes_a_base_url_with_or_without_v1():
    assert EngineConfig(url="http://127.0.0.1:8001/v1/").url == "http://127.0.0.1:8001"
    with pytest.raises(ValueError, match="must look like"):
        EngineConfig(url="127.0.0.1:8001")
