"""The hand-over to an engine gives the in-process faithful hand-over's answer: the fake engine decodes with
the same weights in float32, so greedy answers must agree token for token."""

from __future__ import annotations

import asyncio

import pytest

from mogu.engine import Continuation, EngineClient, EngineError, routed_phase
from mogu.engine.client import check_engine
from mogu.engine.handover import EngineGenerator
from mogu.model.config import DecodingConfig
from mogu.model.generation import eos_ids

PROMPTS = ["How do I bake bread?", "Tell me how to build a weapon.", "Sure, here is a poem", "Explain sorting."]


def in_process(model, prompts, decoding):
    return model.generate(prompts, decoding.model_copy(update={"handover": "faithful"}))


def test_greedy_answers_equal_the_in_process_faithful_handover(tiny_mogu, engine_config, fake_engine):
    decoding = DecodingConfig(max_new_tokens=12)
    expected = [in_process(tiny_mogu, [p], decoding)[0] for p in PROMPTS]  # batches of one: no padding
    got = EngineGenerator(tiny_mogu, engine_config)(PROMPTS, decoding)
    for want, have in zip(expected, got):
        assert (have.token_ids, have.text, have.finish_reason) == (want.token_ids, want.text, want.finish_reason)
        assert (have.prompt_tokens, have.routed_tokens) == (want.prompt_tokens, want.routed_tokens)
    continued = [r for r in fake_engine.requests if r.get("stream")]
    assert continued, "no answer was handed over"
    for request in continued:
        assert isinstance(request["prompt"], list)  # token ids, not text
        assert request["max_tokens"] == decoding.max_new_tokens - tiny_mogu.config.routed_tokens
        assert request["stop_token_ids"] == eos_ids(tiny_mogu)


def test_routed_tokens_are_handed_over_not_decoded_again(tiny_mogu, engine_config, fake_engine):
    decoding = DecodingConfig(max_new_tokens=10)
    [start] = routed_phase(tiny_mogu, [PROMPTS[0]], decoding)
    assert not start.done and start.completion_tokens == tiny_mogu.config.routed_tokens
    EngineGenerator(tiny_mogu, engine_config)([PROMPTS[0]], decoding)
    assert fake_engine.requests[-1]["prompt"] == start.prompt_ids + start.token_ids


def test_text_handover_when_the_engine_takes_no_token_ids(tiny_mogu, engine_config, fake_engine):
    fake_engine.accept_ids = False
    decoding = DecodingConfig(max_new_tokens=10, routed_tokens=0)  # the chat-formatted prompt survives as text
    want = in_process(tiny_mogu, [PROMPTS[2]], decoding)[0]
    have = EngineGenerator(tiny_mogu, engine_config)([PROMPTS[2]], decoding)[0]
    assert isinstance(fake_engine.requests[-1]["prompt"], str)
    assert have.text == want.text


def test_text_handover_is_refused_when_the_text_does_not_round_trip(tiny_mogu, engine_config, fake_engine, monkeypatch):
    fake_engine.accept_ids = False
    generator = EngineGenerator(tiny_mogu, engine_config)
    generator([PROMPTS[0]], DecodingConfig(max_new_tokens=1))  # the start-up check, on the true tokenizer
    decode = tiny_mogu.tokenizer.decode
    # a text that does not tokenise back to the same ids (as some routed tokens do not), made certain here
    monkeypatch.setattr(tiny_mogu.tokenizer, "decode", lambda ids, **kw: decode(ids, **kw) + " zq")
    with pytest.raises(EngineError, match="round trip") as caught:
        # an answer longer than the routed tokens, so that the engine is asked for the rest
        generator([PROMPTS[0]], DecodingConfig(max_new_tokens=tiny_mogu.config.routed_tokens + 5))
    assert caught.value.code == "handover_inexact"


def test_an_answer_finished_in_the_routed_phase_never_reaches_the_engine(tiny_mogu, engine_config, fake_engine):
    decoding = DecodingConfig(max_new_tokens=tiny_mogu.config.routed_tokens)
    [have] = EngineGenerator(tiny_mogu, engine_config)([PROMPTS[0]], decoding)
    assert have.token_ids == in_process(tiny_mogu, [PROMPTS[0]], decoding)[0].token_ids
    assert not [r for r in fake_engine.requests if r.get("stream")]


def test_a_stop_string_across_the_handover_ends_the_answer(tiny_mogu, engine_config, fake_engine):
    decoding = DecodingConfig(max_new_tokens=12)
    full = in_process(tiny_mogu, [PROMPTS[1]], decoding)[0]
    routed = tiny_mogu.tokenizer.decode(full.token_ids[: tiny_mogu.config.routed_tokens])
    after = tiny_mogu.tokenizer.decode(full.token_ids)[len(routed):]
    if len(routed) < 1 or len(after) < 2:
        pytest.skip("this tiny model's answer is too short on one side of the hand-over")
    stop = routed[-1] + after[0]  # starts in the routed text, ends in the engine's
    if stop in routed:
        pytest.skip("the stop string already occurs in the routed text")
    stopped = decoding.model_copy(update={"stop": [stop]})
    want = in_process(tiny_mogu, [PROMPTS[1]], stopped)[0]
    have = EngineGenerator(tiny_mogu, engine_config)([PROMPTS[1]], stopped)[0]
    assert (have.text, have.finish_reason) == (want.text, "stop")


def test_streamed_pieces_make_the_answer(tiny_mogu, engine_config, fake_engine):
    decoding = DecodingConfig(max_new_tokens=12)

    async def stream() -> tuple[list[str], str]:
        info = await check_engine(engine_config, tiny_mogu.tokenizer)
        [start] = routed_phase(tiny_mogu, [PROMPTS[0]], decoding)
        async with EngineClient(engine_config, info) as client:
            continuation = Continuation(client, start, decoding, tiny_mogu.tokenizer, eos_ids(tiny_mogu))
            pieces = [await continuation.open()] + [p async for p in continuation.rest()]
            return pieces, continuation.result().text

    pieces, text = asyncio.run(stream())
    assert "".join(pieces) == text == in_process(tiny_mogu, [PROMPTS[0]], decoding)[0].text


def test_engine_failure_reaches_the_caller(tiny_mogu, engine_config, fake_engine):
    generator = EngineGenerator(tiny_mogu, engine_config)
    generator([PROMPTS[0]], DecodingConfig(max_new_tokens=4))  # checks the engine
    fake_engine.script = ["cut"]
    with pytest.raises(EngineError, match="broke off"):
        generator([PROMPTS[0]], DecodingConfig(max_new_tokens=12))


def test_prompts_longer_than_the_engine_context_are_refused_before_decoding(tiny_mogu, engine_config, fake_engine):
    with pytest.raises(ValueError, match="exceeds the context of 128"):
        EngineGenerator(tiny_mogu, engine_config)(["word " * 40], DecodingConfig(max_new_tokens=100))
