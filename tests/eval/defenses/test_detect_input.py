"""``detect-input``: a probe on the last prompt token flags prompts, which get a refusal; the probe is cached."""

from __future__ import annotations

import torch

from mogu.eval.defenses.detect_input import REFUSAL_TEXT, InputDetector, LinearProbe, fit_probe
from mogu.eval.defenses.none import NoDefense
from mogu.eval.defenses.registry import make_defense
from mogu.model.probe import balanced_accuracy


def forced(model, bias: float) -> LinearProbe:
    """A probe that says the same of every prompt: harmful for a large bias, benign for a very negative one."""
    d = model.base_model.config.hidden_size
    return LinearProbe(1, torch.zeros(d), bias, torch.zeros(d), torch.ones(d))


def test_detect_input_refuses_what_the_probe_flags(model, prompts, decoding):
    flagged = InputDetector(model, "unused", probe=forced(model, 10.0)).generate(prompts, decoding)
    assert flagged == [REFUSAL_TEXT] * len(prompts)
    passed = InputDetector(model, "unused", probe=forced(model, -10.0)).generate(prompts, decoding)
    assert passed == NoDefense(model).generate(prompts, decoding)


def test_fit_probe_separates_separable_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 8, generator=gen)
    score = x[:, 0] + 0.5 * x[:, 1]
    x, y = x[score.abs() > 0.5], (score[score.abs() > 0.5] > 0).long()  # a margin around the boundary
    probe = fit_probe(x * 3 + 1, y, layer=2)
    assert balanced_accuracy((probe.probability(x * 3 + 1) >= 0.5).long(), y) == 1.0


def test_the_probe_is_trained_once_and_saved_whole(model, cache, options, monkeypatch):
    defense = make_defense("detect-input", model, cache_dir=cache, options=options)
    defense.prepare()
    folder = cache / "detect-input"
    assert sorted(p.name for p in folder.iterdir()) == ["probe.json", "probe.safetensors"]  # no temporary files left
    assert defense.info()["layer"] in defense.candidate_layers()
    monkeypatch.setattr(InputDetector, "_train", lambda self: (_ for _ in ()).throw(AssertionError("trained again")))
    again = make_defense("detect-input", model, cache_dir=cache, options=options)
    again.prepare()
    loaded, saved = again.probe, defense.probe
    assert loaded.layer == saved.layer and loaded.bias == saved.bias
    assert all(torch.equal(getattr(loaded, t), getattr(saved, t)) for t in ("weight", "mean", "std"))


def test_detect_input_learns_from_framed_copies_as_configured(model, framed, tmp_path):
    """detect-input trains on what MoGU trained on: the instructions and their framed copies."""
    defense = make_defense("detect-input", model, cache_dir=tmp_path, options=framed)
    defense.prepare()
    assert defense.info()["train_examples"] == 24  # 12 train instructions, each with a framed copy
