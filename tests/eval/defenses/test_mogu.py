"""``mogu``, ``mogu@SHIFT`` and ``mogu-fixed``: the bundle routed, routed with shifted routers, and with constant gates."""

from __future__ import annotations

import pytest
import torch

from mogu.eval.defenses import DefenseError
from mogu.eval.defenses.mogu import MoGUDefense, MoGUFixed, ShiftedMoGU, is_trained, router_shift, shifted_name
from mogu.model import MoGUModel
from mogu.train.calibrate import shift_routers


def test_mogu_fixed_uses_fixed_gates(model, prompts, decoding, spy):
    MoGUFixed(model).generate(prompts[:1], decoding)
    MoGUDefense(model).generate(prompts[:1], decoding)
    MoGUFixed(model, w_unwill=1.0, w_glad=0.0).generate(prompts[:1], decoding)
    assert (spy[0][1].mode, spy[0][1].fixed) == ("fixed", (0.5, 0.5))
    assert spy[1][1].mode == "mogu"
    assert spy[2][1].fixed == (1.0, 0.0)


def test_only_experts_with_weights_are_trained(model, tiny_model_dirs):
    assert is_trained(model)  # randomised
    assert not is_trained(MoGUModel.from_base(str(tiny_model_dirs["llama"])))  # LoRA B = 0: the base model


def test_shifted_mogu_answers_as_the_shifted_bundle_and_puts_the_routers_back(model, prompts, decoding, spy):
    before = model.router_state_dict()
    shifted = {shift: ShiftedMoGU(model, shift) for shift in (-50.0, 50.0)}
    answers = {shift: defense.generate(prompts, decoding) for shift, defense in shifted.items()}
    after = model.router_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # put back exactly
    assert answers[-50.0] != answers[50.0]  # the shift decides the answers
    assert all(asked.mode == "mogu" for _, asked in spy)
    assert shifted[50.0].name == "mogu@+50"
    assert shifted[50.0].params() == {"mode": "mogu", "routed_tokens": model.config.routed_tokens, "router_shift": 50.0}
    for shift, made in answers.items():  # the same answers as the bundle's routers shifted by calibrate's function
        shift_routers(model, shift)
        try:
            assert MoGUDefense(model).generate(prompts, decoding) == made
        finally:
            model.set_router_state(before)


def test_shifted_mogu_puts_the_routers_back_on_error(model, prompts, decoding, monkeypatch):
    before = model.router_state_dict()

    def fail(chats, decoding=None, on_text=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "generate", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        ShiftedMoGU(model, -2.0).generate(prompts, decoding)
    after = model.router_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_shifted_names():
    assert [shifted_name(s) for s in (0.5, -1, 2.0)] == ["mogu@+0.5", "mogu@-1", "mogu@+2"]
    assert router_shift("mogu@+0.5") == 0.5 and router_shift("mogu@-1") == -1.0 and router_shift("mogu") is None
    for bad in ("mogu@", "mogu@half", "mogu@nan"):
        with pytest.raises(DefenseError, match="mogu@SHIFT"):
            router_shift(bad)
