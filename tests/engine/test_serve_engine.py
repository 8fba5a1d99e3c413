"""``mogu serve`` with an engine (the fake one), spoken to with the official ``openai`` client: one answer
streamed or not, OpenAI-shaped 502/503/504 errors, a broken stream never reported as complete, ``/health``
with the engine's state, and a client that leaves cancelling its engine request."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai import OpenAI

from mogu.model.config import DecodingConfig

HELLO = [{"role": "user", "content": "How do I bake bread?"}]


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=20)


def expected(model, max_tokens: int):
    return model.generate([HELLO], DecodingConfig(max_new_tokens=max_tokens))[0]


def test_answer_equals_in_process_streamed_or_not(mogu_server, tiny_mogu, fake_engine):
    want = expected(tiny_mogu, 12)
    api = client(mogu_server)
    answer = api.chat.completions.create(model="x", messages=HELLO, max_tokens=12)
    assert answer.choices[0].message.content == want.text
    assert answer.choices[0].finish_reason == want.finish_reason
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    chunks = list(api.chat.completions.create(model="x", messages=HELLO, max_tokens=12, stream=True,
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].usage.completion_tokens == want.completion_tokens
    assert len([r for r in fake_engine.requests if r.get("stream")]) == 2


def test_sampling_settings_seed_and_stop_reach_the_engine(mogu_server, fake_engine):
    client(mogu_server).chat.completions.create(model="x", messages=HELLO, max_tokens=10, temperature=0.7,
                                                top_p=0.9, seed=11, stop=["zzz"])
    sent = fake_engine.requests[-1]
    assert (sent["temperature"], sent["top_p"], sent["seed"], sent["stop"]) == (0.7, 0.9, 11, ["zzz"])


@pytest.mark.parametrize(("script", "status"), [(["500"] * 3, 502), (["503"] * 3, 503), (["slow"] * 3, 504)])
@pytest.mark.parametrize("stream", [False, True])
def test_engine_failures_before_streaming_are_openai_errors(mogu_server, fake_engine, script, status, stream):
    fake_engine.script = list(script)
    fake_engine.slow_s = 1.5
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        result = client(mogu_server).chat.completions.create(model="x", messages=HELLO, max_tokens=12, stream=stream)
        if stream:
            list(result)
    assert caught.value.status_code == status
    assert caught.value.body["code"].startswith("engine_")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_engine_is_a_503(start_mogu, dead_url, stream):
    started = time.monotonic()
    with start_mogu(dead_url) as url, pytest.raises(openai.APIStatusError) as caught:
        result = client(url).chat.completions.create(model="x", messages=HELLO, max_tokens=12, stream=stream)
        if stream:
            list(result)
    assert (caught.value.status_code, caught.value.body["code"]) == (503, "engine_unavailable")
    assert time.monotonic() - started < 10
    with start_mogu(dead_url) as url:
        health = httpx.get(f"{url}/health")
    assert health.status_code == 503 and health.json()["engine"]["status"] == "unreachable"


def test_engine_that_dies_mid_stream_ends_the_answer_with_an_error(mogu_server, fake_engine):
    fake_engine.script = ["cut"]
    pieces = []
    with pytest.raises(openai.APIError, match="broke off"):
        for chunk in client(mogu_server).chat.completions.create(model="x", messages=HELLO, max_tokens=12,
                                                                 stream=True):
            assert chunk.choices[0].finish_reason is None  # never reported as complete
            pieces.append(chunk.choices[0].delta.content)
    assert pieces  # the routed tokens and the engine's first ones had come


def test_engine_that_dies_mid_answer_gives_a_502_when_not_streamed(mogu_server, fake_engine):
    fake_engine.script = ["cut"]
    with pytest.raises(openai.APIStatusError) as caught:
        client(mogu_server).chat.completions.create(model="x", messages=HELLO, max_tokens=12)
    assert caught.value.status_code == 502


def test_health_reports_the_engine(mogu_server, fake_engine):
    ok = httpx.get(f"{mogu_server}/health").json()
    assert ok["status"] == "ok" and ok["engine"]["status"] == "ok"
    fake_engine.healthy = False
    down = httpx.get(f"{mogu_server}/health")
    assert down.status_code == 503 and down.json()["status"] == "engine_unavailable"


def test_a_client_that_leaves_cancels_its_engine_request(mogu_server, fake_engine):
    fake_engine.token_delay_s = 0.2  # 9 engine tokens: about 2 s if nobody leaves
    body = {"model": "x", "messages": HELLO, "max_tokens": 12, "stream": True}
    with httpx.stream("POST", f"{mogu_server}/v1/chat/completions", json=body, timeout=10) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                break  # the first chunk is there; hang up
    deadline = time.monotonic() + 5
    while fake_engine.aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_engine.aborted == 1
