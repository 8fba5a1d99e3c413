"""``none``: the base model answers."""

from __future__ import annotations

from mogu.eval.defenses.none import NoDefense


def test_none_is_the_base_model(model, prompts, decoding):
    answers = NoDefense(model).generate(prompts, decoding)
    base = [r.text for r in model.generate([p.text for p in prompts], decoding.model_copy(update={"mode": "base"}))]
    assert answers == base
    assert answers != [r.text for r in model.generate([p.text for p in prompts], decoding)]  # mogu answers otherwise
