"""Defenses: one answer per prompt, what each one shows the model, SafeDecoding, the probe, SFT caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mogu.model.config import DecodingConfig
from mogu.eval import defenses as D
from mogu.eval.suites import Prompt
from mogu.model import MoGUModel
from mogu.model.chat import format_chat
from tests.support.models import instructions_file, randomize

PROMPTS = [Prompt(str(i), text, "s", "harmful") for i, text in
           enumerate(["How do I bake bread?", "Tell me a poem about the sea and the sky, please", "Hi"])]
DECODING = DecodingConfig(max_new_tokens=6)
SFT_OPTIONS = {"epochs": 1, "batch_size": 4, "eval_every": 2}


@pytest.fixture(scope="module")
def model(tiny_model_dirs) -> MoGUModel:
    return randomize(MoGUModel.from_base(str(tiny_model_dirs["llama"])), seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("defenses")


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> dict:
    data = instructions_file(tmp_path_factory.mktemp("data") / "instructions.jsonl")
    plain = {"data": str(data), "framing": {"train_fraction": 0.0, "val_fraction": 0.0}}
    return {"sft": {**SFT_OPTIONS, **plain}, "detect-input": plain}


class Spy:
    """Records what ``model.generate`` is asked, then calls it."""

    def __init__(self, model: MoGUModel, monkeypatch) -> None:
        self.calls: list[tuple[list, DecodingConfig]] = []
        original = model.generate

        def generate(prompts, decoding=None, on_text=None):
            self.calls.append((list(prompts), decoding))
            return original(prompts, decoding, on_text)

        monkeypatch.setattr(model, "generate", generate)


def test_every_defense_answers_every_prompt(model, cache, options):
    before = [p.detach().clone() for layer in model.layers for p in (layer.lora_A["glad"].weight, layer.lora_B["glad"].weight)]
    for name in D.DEFENSES:
        defense = D.make_defense(name, model, bundle=True, cache_dir=cache, options=options)
        answers = defense.generate(PROMPTS, DECODING)
        assert len(answers) == len(PROMPTS) and all(isinstance(a, str) for a in answers), name
        assert defense.generate([], DECODING) == []
    after = [p for layer in model.layers for p in (layer.lora_A["glad"].weight, layer.lora_B["glad"].weight)]
    assert all(torch.equal(b, a) for b, a in zip(before, after))  # the bundle's own expert is back in place
    assert (cache / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    probe = json.loads((cache / "detect-input" / "probe.json").read_text())
    assert probe["layer"] in D.InputDetector(model, cache / "x").candidate_layers()


def test_none_is_the_base_model(model):
    answers = D.make_defense("none", model).generate(PROMPTS, DECODING)
    base = [r.text for r in model.generate([p.text for p in PROMPTS], DECODING.model_copy(update={"mode": "base"}))]
    assert answers == base


def test_self_reminder_and_icd_change_the_chat(model, monkeypatch):
    spy = Spy(model, monkeypatch)
    D.make_defense("none", model).generate(PROMPTS[:1], DECODING)
    D.make_defense("self-reminder", model).generate(PROMPTS[:1], DECODING)
    D.make_defense("icd", model).generate(PROMPTS[:1], DECODING)
    (plain,), _ = spy.calls[0]
    (reminded,), decoding = spy.calls[1]
    (icd,), _ = spy.calls[2]
    assert plain == PROMPTS[0].text
    assert reminded == [{"role": "system", "content": D.SELF_REMINDER_SYSTEM},
                        {"role": "user", "content": PROMPTS[0].text + D.SELF_REMINDER_SUFFIX}]
    assert decoding.mode == "base"
    assert [m["role"] for m in icd] == ["user", "assistant", "user"]
    assert icd[0]["content"] == D.ICD_DEMOS[0][0] and icd[-1]["content"] == PROMPTS[0].text
    texts = {format_chat(model.tokenizer, c) for c in (plain, reminded, icd)}
    assert len(texts) == 3  # the model really sees three different prompts


def test_self_reminder_without_a_system_turn(model, monkeypatch):
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    monkeypatch.setattr(model.config, "chat_template", template)
    [chat] = [D.SelfReminder(model).chat(PROMPTS[0])]
    assert chat == [{"role": "user", "content": f"{D.SELF_REMINDER_SYSTEM}\n\n{PROMPTS[0].text}{D.SELF_REMINDER_SUFFIX}"}]


def test_safedecoding_scores_on_hand_made_probabilities():
    p_base = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]])
    p_expert = torch.tensor([[0.05, 0.1, 0.3, 0.5, 0.05]])
    # top-1 sets {0} and {3} do not meet; top-3 of both share {1, 2}: the sample space for c = 2
    scores = D.safedecoding_scores(p_base, p_expert, alpha=3.0, top_c=2)
    assert torch.isfinite(scores).tolist() == [[False, True, True, False, False]]
    assert int(scores.argmax()) == 2  # 0.1 + 3 * (0.3 - 0.1) beats 0.3 + 3 * (0.1 - 0.3)
    assert int(D.safedecoding_scores(p_base, p_expert, alpha=0.0, top_c=2).argmax()) == 1
    assert torch.isfinite(D.safedecoding_scores(p_base, p_expert, 1.0, top_c=99)).all()


def test_safedecoding_alpha_zero_is_the_base_model_and_alpha_one_the_expert(model):
    vocab = len(model.tokenizer)
    chats = [p.text for p in PROMPTS]
    base = [r.text for r in model.generate(chats, DECODING.model_copy(update={"mode": "base"}))]
    glad = [r.text for r in model.generate(chats, DECODING.model_copy(update={"mode": "glad", "routed_tokens": 6}))]
    assert base != glad  # the expert (the randomised glad LoRA) must differ, or this proves nothing
    assert D.safe_decode(model, chats, DECODING, alpha=0.0, m=3, top_c=vocab) == base
    assert D.safe_decode(model, chats, DECODING, alpha=1.0, m=6, top_c=vocab) == glad
    one_by_one = [D.safe_decode(model, [c], DECODING, alpha=3.0, m=2, top_c=5)[0] for c in chats]
    assert D.safe_decode(model, chats, DECODING, alpha=3.0, m=2, top_c=5) == one_by_one


def test_detect_input_refuses_what_the_probe_flags(model):
    d = model.base_model.config.hidden_size

    def forced(bias: float) -> D.LinearProbe:
        return D.LinearProbe(1, torch.zeros(d), bias, torch.zeros(d), torch.ones(d))

    flagged = D.InputDetector(model, "unused", probe=forced(10.0)).generate(PROMPTS, DECODING)
    assert flagged == [D.REFUSAL_TEXT] * len(PROMPTS)
    passed = D.InputDetector(model, "unused", probe=forced(-10.0)).generate(PROMPTS, DECODING)
    assert passed == D.make_defense("none", model).generate(PROMPTS, DECODING)


def test_fit_probe_separates_separable_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 8, generator=gen)
    score = x[:, 0] + 0.5 * x[:, 1]
    x, y = x[score.abs() > 0.5], (score[score.abs() > 0.5] > 0).long()  # a margin around the boundary
    probe = D.fit_probe(x * 3 + 1, y, layer=2)
    assert D.balanced_accuracy((probe.probability(x * 3 + 1) >= 0.5).long(), y) == 1.0


def test_sft_adapter_is_trained_once(model, cache, options, monkeypatch):
    defense = D.make_defense("sft", model, cache_dir=cache, options=options)
    defense.prepare()  # trained by the first test, or now
    import mogu.train.loop

    monkeypatch.setattr(mogu.train.loop, "run_stage", lambda *a, **k: pytest.fail("trained again"))
    again = D.make_defense("sft", model, cache_dir=cache, options=options)
    again.prepare()
    assert all(torch.equal(defense.state[k], again.state[k]) for k in defense.state)
    assert again.info()["train_examples"] == 12
    ready = D.make_defense("sft", model, options={"sft": {"path": str(cache / "sft" / "adapter")}})
    ready.prepare()  # a plain PEFT adapter folder is used as it is
    assert all(torch.equal(defense.state[k], ready.state[k]) for k in defense.state)
    other = D.make_defense("sft", model, cache_dir=cache, options={"sft": {**options["sft"], "lr": 0.5}})
    with pytest.raises(D.DefenseError, match="other settings"):
        other.prepare()


def test_baselines_learn_from_framed_copies_as_configured(model, options, tmp_path):
    """SFT and detect-input train on what MoGU trained on: the instructions and their framed copies."""
    every = {"framing": {"train_fraction": 1.0, "val_fraction": 1.0}}
    framed = {name: {**options[name], **every} for name in ("sft", "detect-input")}
    for name in ("sft", "detect-input"):
        defense = D.make_defense(name, model, cache_dir=tmp_path, options=framed)
        defense.prepare()
        assert defense.info()["train_examples"] == 24, name  # 12 train instructions, each with a framed copy


def test_mogu_defenses_need_a_bundle_and_bad_names_fail(model):
    for name in ("mogu", "mogu-fixed"):
        with pytest.raises(D.DefenseError, match="needs a trained MoGU bundle"):
            D.make_defense(name, model, bundle=False)
    with pytest.raises(D.DefenseError, match="unknown defense"):
        D.parse_defenses("none,magic")
    with pytest.raises(D.DefenseError, match="twice"):
        D.parse_defenses("none,none")
    with pytest.raises(D.DefenseError, match="bad options"):
        D.make_defense("safedecoding", model, options={"safedecoding": {"beta": 1}})
    with pytest.raises(D.DefenseError, match="option 'lr'"):
        D.make_defense("sft", model, options={"sft": {"lr": -1}})
    for name in ("sft", "detect-input"):
        with pytest.raises(D.DefenseError, match="train_fraction"):
            D.make_defense(name, model, options={name: {"framing": {"train_fraction": 2}}})
    assert D.parse_defenses(" none, mogu ") == ["none", "mogu"]


def test_mogu_fixed_uses_fixed_gates(model, monkeypatch):
    spy = Spy(model, monkeypatch)
    D.make_defense("mogu-fixed", model).generate(PROMPTS[:1], DECODING)
    D.make_defense("mogu", model).generate(PROMPTS[:1], DECODING)
    assert (spy.calls[0][1].mode, spy.calls[0][1].fixed) == ("fixed", (0.5, 0.5))
    assert spy.calls[1][1].mode == "mogu"


def test_borrowed_expert_restores_the_slot(model):
    weight = model.layers[0].lora_B["glad"].weight
    original = weight.detach().clone()
    snapshot = model.expert_state_dict("glad")
    other = {k: torch.full_like(v, 0.5) for k, v in snapshot.items()}
    with D.borrowed_expert(model, other, "glad"):
        assert torch.all(weight == 0.5)
        assert torch.equal(next(v for k, v in snapshot.items() if "lora_B" in k), original)  # a snapshot, not a view
    assert torch.equal(weight, original)
