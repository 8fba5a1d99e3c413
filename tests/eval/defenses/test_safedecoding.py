"""``safedecoding``: its scoring rule, and its decoding through the project's generation loop."""

from __future__ import annotations

import pytest
import torch

from mogu.eval.defenses import safedecoding as S
from mogu.eval.defenses.base import DefenseError
from mogu.eval.defenses.registry import make_defense


def test_safedecoding_scores_on_hand_made_probabilities():
    p_base = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]])
    p_expert = torch.tensor([[0.05, 0.1, 0.3, 0.5, 0.05]])
    # top-1 sets {0} and {3} do not meet; top-3 of both share {1, 2}: the sample space for c = 2
    scores = S.safedecoding_scores(p_base, p_expert, alpha=3.0, top_c=2)
    assert torch.isfinite(scores).tolist() == [[False, True, True, False, False]]
    assert int(scores.argmax()) == 2  # 0.1 + 3 * (0.3 - 0.1) beats 0.3 + 3 * (0.1 - 0.3)
    assert int(S.safedecoding_scores(p_base, p_expert, alpha=0.0, top_c=2).argmax()) == 1
    assert torch.isfinite(S.safedecoding_scores(p_base, p_expert, 1.0, top_c=99)).all()


def test_safedecoding_alpha_zero_is_the_base_model_and_alpha_one_the_expert(model, prompts, decoding):
    vocab = len(model.tokenizer)
    chats = [p.text for p in prompts]
    base = [r.text for r in model.generate(chats, decoding.model_copy(update={"mode": "base"}))]
    glad = [r.text for r in model.generate(chats, decoding.model_copy(update={"mode": "glad", "routed_tokens": 6}))]
    assert base != glad  # the expert (the randomised glad LoRA) must differ, or this proves nothing
    assert S.safe_decode(model, chats, decoding, alpha=0.0, m=3, top_c=vocab) == base
    assert S.safe_decode(model, chats, decoding, alpha=1.0, m=6, top_c=vocab) == glad
    one_by_one = [S.safe_decode(model, [c], decoding, alpha=3.0, m=2, top_c=5)[0] for c in chats]
    assert S.safe_decode(model, chats, decoding, alpha=3.0, m=2, top_c=5) == one_by_one


def test_the_first_m_tokens_are_greedy_whatever_the_sampling(model, prompts, decoding):
    chats = [p.text for p in prompts]
    glad = [r.text for r in model.generate(chats, decoding.model_copy(update={"mode": "glad", "routed_tokens": 6}))]
    hot = decoding.model_copy(update={"temperature": 5.0, "seed": 1})
    assert S.safe_decode(model, chats, hot, alpha=1.0, m=6, top_c=len(model.tokenizer)) == glad


def test_safedecoding_decodes_through_the_generation_loop_m_tokens_by_its_rule(model, prompts, decoding, monkeypatch):
    """The one generation loop decodes, in mode base with ``m`` routed tokens; the processor picks exactly those."""
    seen, picks = [], []
    original_generate, original_call = S.generate, S.SafeDecodingProcessor.__call__

    def generate(model, chats, decoding, first_tokens=None):
        seen.append((decoding.mode, decoding.routed_tokens))
        return original_generate(model, chats, decoding, first_tokens=first_tokens)

    def call(self, input_ids, scores):
        out = original_call(self, input_ids, scores)
        picks.append(out)
        return out

    monkeypatch.setattr(S, "generate", generate)
    monkeypatch.setattr(S.SafeDecodingProcessor, "__call__", call)
    S.safe_decode(model, [p.text for p in prompts], decoding, alpha=3.0, m=2, top_c=5)
    assert seen == [("base", 2)] and len(picks) == 2
    assert all(bool(((p == 0).sum(-1) == 1).all()) and bool((p[p != 0] == float("-inf")).all()) for p in picks)


def test_safedecoding_borrows_the_sft_lora_and_checks_its_settings(model, cache, options, prompts, decoding):
    defense = make_defense("safedecoding", model, cache_dir=cache, options=options)
    before = model.expert_state_dict("glad")
    assert len(defense.generate(prompts, decoding)) == len(prompts)
    assert all(torch.equal(before[k], v) for k, v in model.expert_state_dict("glad").items())
    assert defense.params()["expert"] == defense.expert.params() and defense.info()["expert"]["train_examples"] == 12
    with pytest.raises(DefenseError, match="alpha >= 0"):
        S.SafeDecoding(model, defense.expert, alpha=-1)
