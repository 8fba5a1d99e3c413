"""Tiny random-weight models per architecture, saved as real model folders (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.support.models import ARCHITECTURES, build_model, build_tokenizer
from tests.support.training import write_instructions

# Tiny models run fastest on one thread (and a second thread only spins when the other core is busy); the
# integration test on the real model restores the default (DEFAULT_THREADS).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """One saved model folder per architecture, built once per test session."""
    dirs = {}
    for model_type in ARCHITECTURES:
        path = tmp_path_factory.mktemp(f"tiny-{model_type}")
        build_model(model_type, len(tiny_tokenizer)).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        dirs[model_type] = path
    return dirs


@pytest.fixture(params=list(ARCHITECTURES))
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_dir(tiny_model_dirs, arch) -> Path:
    return tiny_model_dirs[arch]


@pytest.fixture
def llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture
def instructions(tmp_path) -> Path:
    """A small instructions file with train, val and test splits (``write_instructions``)."""
    return write_instructions(tmp_path / "instructions.jsonl")
