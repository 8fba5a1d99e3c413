"""Defenses by name: each one answers every prompt, names and options are checked."""

from __future__ import annotations

import pytest
import torch

from mogu.eval.defenses import DEFENSES, DefenseError, make_defense, parse_defenses, with_mogu_shifts


def test_every_defense_answers_every_prompt(model, cache, options, prompts, decoding):
    before = model.expert_state_dict("glad")
    for name in DEFENSES:
        defense = make_defense(name, model, bundle=True, cache_dir=cache, options=options)
        assert defense.name == name
        answers = defense.generate(prompts, decoding)
        assert len(answers) == len(prompts) and all(isinstance(a, str) for a in answers), name
        assert defense.generate([], decoding) == []
    after = model.expert_state_dict("glad")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the bundle's own expert is back in place
    assert (cache / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert (cache / "detect-input" / "probe.json").is_file()


def test_mogu_defenses_need_a_bundle_and_bad_names_fail(model):
    for name in ("mogu", "mogu-fixed", "mogu@+0.5"):
        with pytest.raises(DefenseError, match="needs a trained MoGU bundle"):
            make_defense(name, model, bundle=False)
    with pytest.raises(DefenseError, match="unknown defense"):
        parse_defenses("none,magic")
    with pytest.raises(DefenseError, match="unknown defense"):
        make_defense("magic", model)
    with pytest.raises(DefenseError, match="options for unknown"):
        make_defense("none", model, options={"magic": {}})
    with pytest.raises(DefenseError, match="twice"):
        parse_defenses("none,none")
    with pytest.raises(DefenseError, match="bad options"):
        make_defense("safedecoding", model, options={"safedecoding": {"beta": 1}})
    with pytest.raises(DefenseError, match="option 'lr'"):
        make_defense("sft", model, options={"sft": {"lr": -1}})
    for name in ("sft", "detect-input"):
        with pytest.raises(DefenseError, match="train_fraction"):
            make_defense(name, model, options={name: {"framing": {"train_fraction": 2}}})
    assert parse_defenses(" none, mogu ") == ["none", "mogu"]


def test_mogu_at_a_shift_is_a_defense_and_shifts_follow_mogu(model):
    assert parse_defenses("none,mogu,mogu@0.5,mogu@-1") == ["none", "mogu", "mogu@+0.5", "mogu@-1"]
    with pytest.raises(DefenseError, match="twice"):
        parse_defenses("mogu@0.5,mogu@+0.50")
    with pytest.raises(DefenseError, match="mogu@SHIFT"):
        parse_defenses("mogu@big")
    defense = make_defense("mogu@-1", model)
    assert defense.name == "mogu@-1" and defense.params()["router_shift"] == -1.0
    assert with_mogu_shifts(["none", "mogu", "sft"], [2, -0.5, 0, 2.0]) == ["none", "mogu", "mogu@-0.5", "mogu@+2", "sft"]
    assert with_mogu_shifts(["mogu", "mogu@+2"], [2, 1]) == ["mogu", "mogu@+1", "mogu@+2"]
    assert with_mogu_shifts(("none",), []) == ["none"]
    with pytest.raises(DefenseError, match="add mogu"):
        with_mogu_shifts(["none"], [1])
