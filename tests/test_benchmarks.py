"""The benchmark scripts that measure a bundle run end to end on a tiny one and print what they claim to.

Their figures come from runs on the real default model (docs/); here each
script is run once on a bundle trained from a tiny model, so that a change in
the library that breaks a script fails the suite instead of the next
measurement.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mogu.train.augment import framed_copies
from mogu.train.config import FramingConfig
from mogu.train.data import load_records
from mogu.train.pipeline import bundle_train_config, train
from tests.test_train import tiny_config, write_instructions

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VALIDATION = 4  # validation instructions of write_instructions: two harmful, two benign


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model_dirs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("benchmarks")
    data = write_instructions(folder / "instructions.jsonl")
    return train(tiny_config(tiny_model_dirs["llama"], data, framing=FramingConfig(val_fraction=1.0)), folder / "bundle")


def run_script(name: str, *args: str, monkeypatch, capsys) -> dict:
    """Run ``benchmarks/NAME`` as a script with ``args`` and return the JSON it printed."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other, as when run from there
    monkeypatch.setattr(sys, "argv", [name, *args])
    capsys.readouterr()
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    return json.loads(capsys.readouterr().out)


def assert_refusals(measured: dict) -> None:
    harmful, benign = measured["harmful_refusal"], measured["benign_refusal"]
    assert 0 <= harmful <= 1 and 0 <= benign <= 1
    assert measured["balanced"] == pytest.approx((harmful + 1 - benign) / 2, abs=1e-3)


def test_framed_validation_measures_every_suite(tiny_bundle, monkeypatch, capsys):
    attack = BENCHMARKS / "data" / "attack_framings.json"
    result = run_script("framed_validation.py", str(tiny_bundle), "--attack", str(attack),
                        monkeypatch=monkeypatch, capsys=capsys)
    assert result["n"] == {"plain": VALIDATION, "framed": VALIDATION, "attack": VALIDATION}
    for suite in ("plain", "framed", "attack"):
        assert_refusals(result[suite])


def test_framed_validation_answers_with_the_decoding_asked_for(tiny_bundle, monkeypatch, capsys):
    from mogu.train import stages

    seen = []
    original = stages.routed_validation
    monkeypatch.setattr(stages, "routed_validation", lambda m, r, d: seen.append(d) or original(m, r, d))
    run_script("framed_validation.py", str(tiny_bundle), "--max-new-tokens", "6", "--routed-tokens", "3",
               monkeypatch=monkeypatch, capsys=capsys)
    assert [(d.max_new_tokens, d.routed_tokens) for d in seen] == [(6, 3), (6, 3)]


def test_probe_ceiling_scores_every_instruction_out_of_fold(tiny_bundle, monkeypatch, capsys):
    result = run_script("probe_ceiling.py", str(tiny_bundle), "--folds", "2", monkeypatch=monkeypatch, capsys=capsys)
    config = bundle_train_config(tiny_bundle)
    framed = [r for r in framed_copies(load_records(tiny_bundle / "data.jsonl"), config.framing) if "~" in r.id]
    assert result["plain"]["n"] == 20 and result["framed"]["n"] == len(framed) > VALIDATION  # test rows never read
    for suite in ("plain", "framed"):
        assert_refusals(result[suite])


def test_router_input_probes_score_each_reading_per_routed_layer(tiny_bundle, monkeypatch, capsys):
    result = run_script("router_input_probes.py", str(tiny_bundle), monkeypatch=monkeypatch, capsys=capsys)
    routed = json.loads((tiny_bundle / "layers.json").read_text())["selected"]
    for reading in ("own", "stack", "every_layer_below"):
        assert set(result[reading]) == {str(layer) for layer in routed} | {"mean"}
        assert all(0 <= score <= 1 for score in result[reading].values())


def test_reader_readings_score_each_reading_on_three_suites(tiny_bundle, monkeypatch, capsys):
    result = run_script("reader_readings.py", str(tiny_bundle), "--offsets", "0", "2", "--drafts", "3",
                        "--l2", "0.1", "--mlp", monkeypatch=monkeypatch, capsys=capsys)
    assert set(result["readings"]) == {"plain@0", "system@0", "reminder@0", "ask@0", "plain@2", "draft3"}
    assert result["n"]["plain"] == result["n"]["attack"] == VALIDATION
    for measured in [*result["readings"].values(), result["l2"]["0.1"], result["mlp"]]:
        for suite in ("plain", "framed", "attack"):
            assert_refusals(measured[suite])
        assert measured["mean2"] == pytest.approx((measured["plain"]["balanced"] + measured["framed"]["balanced"]) / 2,
                                                  abs=1e-3)


def test_router_ablation_retrains_only_the_routers(tiny_bundle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ablation"
    run_script("router_ablation.py", str(tiny_bundle), str(out), '{"router": {"first": "routers"}}',
               monkeypatch=monkeypatch, capsys=capsys)
    for expert in ("glad", "unwill"):  # the bundle's experts, unchanged
        kept = load_file(out / expert / "adapter_model.safetensors")
        original = load_file(tiny_bundle / expert / "adapter_model.safetensors")
        assert kept.keys() == original.keys() and all((kept[k] == original[k]).all() for k in kept)
    assert not any(key.startswith("reader.") for key in load_file(out / "router.safetensors"))
    assert any(key.startswith("reader.") for key in load_file(tiny_bundle / "router.safetensors"))
