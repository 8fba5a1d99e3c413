"""``sft``: a LoRA trained once through the experts' training loop, cached, reused, answering every token."""

from __future__ import annotations

import pytest
import torch

from mogu.eval.defenses import sft as sft_module
from mogu.eval.defenses.base import DefenseError
from mogu.eval.defenses.registry import make_defense
from mogu.eval.defenses.sft import SFTDefense
from mogu.train import loop


def test_sft_trains_through_the_training_loop_once(model, options, tmp_path, monkeypatch):
    stages = []
    monkeypatch.setattr(sft_module, "run_stage", lambda stage, *a, **k: stages.append(stage) or loop.run_stage(stage, *a, **k))
    defense = make_defense("sft", model, cache_dir=tmp_path, options=options)
    defense.prepare()
    assert [s.name for s in stages] == ["sft"] and len(stages[0].items) == 12  # the experts' loop, its own stage
    assert (tmp_path / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "sft" / "work").exists() and not (tmp_path / "sft" / "sft.pending.json").exists()
    monkeypatch.setattr(sft_module, "run_stage", lambda *a, **k: pytest.fail("trained again"))
    again = make_defense("sft", model, cache_dir=tmp_path, options=options)
    again.prepare()
    assert all(torch.equal(defense.state[k], again.state[k]) for k in defense.state)
    assert again.info()["train_examples"] == 12 and again.info()["selected_step"] is not None
    ready = make_defense("sft", model, options={"sft": {"path": str(tmp_path / "sft" / "adapter")}})
    ready.prepare()  # a plain PEFT adapter folder is used as it is
    assert all(torch.equal(defense.state[k], ready.state[k]) for k in defense.state)
    other = make_defense("sft", model, cache_dir=tmp_path, options={"sft": {**options["sft"], "lr": 0.5}})
    with pytest.raises(DefenseError, match="other settings"):
        other.prepare()


def test_sft_answers_with_its_lora_and_gives_the_slot_back(model, cache, options, prompts, decoding, spy):
    defense = make_defense("sft", model, cache_dir=cache, options=options)
    defense.prepare()
    glad = model.expert_state_dict("glad")
    assert any(not torch.equal(glad[k], defense.state[k]) for k in glad)  # another LoRA, or this proves nothing
    answers = defense.generate(prompts, decoding)
    (chats, used), = spy
    assert chats == [p.text for p in prompts] and (used.mode, used.routed_tokens) == ("glad", decoding.max_new_tokens)
    assert len(answers) == len(prompts)
    assert all(torch.equal(glad[k], v) for k, v in model.expert_state_dict("glad").items())


def test_sft_learns_from_framed_copies_as_configured(model, framed, tmp_path):
    """SFT trains on what MoGU trained on: the instructions and their framed copies."""
    defense = make_defense("sft", model, cache_dir=tmp_path, options=framed)
    defense.prepare()
    assert defense.info()["train_examples"] == 24  # 12 train instructions, each with a framed copy


def test_sft_options_are_checked(model):
    with pytest.raises(DefenseError, match="option 'lr'"):
        SFTDefense(model, "unused", lr=-1)
    with pytest.raises(DefenseError, match="train_fraction"):
        SFTDefense(model, "unused", framing={"train_fraction": 2})
