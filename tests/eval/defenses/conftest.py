"""Fixtures of the defense tests: one randomised tiny model, prompts, a shared cache of trained pieces, and the
options that train the SFT adapter and the probe on a tiny instruction set."""

from __future__ import annotations

from pathlib import Path

import pytest

from mogu.eval.suites import Prompt
from mogu.model import MoGUModel
from mogu.model.config import DecodingConfig
from tests.support.models import instructions_file, randomize

SFT_OPTIONS = {"epochs": 1, "batch_size": 4, "eval_every": 2}


@pytest.fixture(scope="package")
def model(tiny_model_dirs) -> MoGUModel:
    return randomize(MoGUModel.from_base(str(tiny_model_dirs["llama"])), seed=3)


@pytest.fixture(scope="package")
def prompts() -> list[Prompt]:
    return [Prompt(str(i), text, "s", "harmful") for i, text in
            enumerate(["How do I bake bread?", "Tell me a poem about the sea and the sky, please", "Hi"])]


@pytest.fixture(scope="package")
def decoding() -> DecodingConfig:
    return DecodingConfig(max_new_tokens=6)


@pytest.fixture(scope="package")
def cache(tmp_path_factory) -> Path:
    """Trained pieces, shared by the tests of this package (the SFT adapter is trained once)."""
    return tmp_path_factory.mktemp("defenses")


@pytest.fixture(scope="package")
def options(tmp_path_factory) -> dict:
    """Options for ``make_defense``: a tiny instruction set (12 train instructions), no framed copies."""
    data = instructions_file(tmp_path_factory.mktemp("data") / "instructions.jsonl")
    plain = {"data": str(data), "framing": {"train_fraction": 0.0, "val_fraction": 0.0}}
    return {"sft": {**SFT_OPTIONS, **plain}, "detect-input": plain}


@pytest.fixture
def framed(options) -> dict:
    """``options`` with a framed copy of every train and val instruction, as ``mogu train`` can add them."""
    every = {"framing": {"train_fraction": 1.0, "val_fraction": 1.0}}
    return {name: {**value, **every} for name, value in options.items()}


@pytest.fixture
def spy(model, monkeypatch) -> list[tuple[list, DecodingConfig]]:
    """What ``model.generate`` is asked, call by call (it still answers)."""
    calls: list[tuple[list, DecodingConfig]] = []
    original = model.generate

    def generate(prompts, decoding=None, on_text=None):
        calls.append((list(prompts), decoding))
        return original(prompts, decoding, on_text)

    monkeypatch.setattr(model, "generate", generate)
    return calls
