"""``mogu`` and ``mogu-fixed``: the bundle routed, and with constant gates."""

from __future__ import annotations

from mogu.eval.defenses.mogu import MoGUDefense, MoGUFixed, is_trained
from mogu.model import MoGUModel


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
