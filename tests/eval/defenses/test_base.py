"""What the defenses share: a borrowed LoRA leaves the slot as it was, options and cache folders are checked."""

from __future__ import annotations

import random

import pytest
import torch

from mogu.eval.defenses.base import DefenseError, borrowed_expert, cache_matches, seeded_subset, validated
from mogu.io.files import write_json_atomic
from mogu.train.config import FramingConfig


def test_borrowed_expert_restores_the_slot(model):
    weight = model.layers[0].lora_B["glad"].weight
    original = weight.detach().clone()
    snapshot = model.expert_state_dict("glad")
    other = {k: torch.full_like(v, 0.5) for k, v in snapshot.items()}
    with borrowed_expert(model, other, "glad"):
        assert torch.all(weight == 0.5)
        assert torch.equal(next(v for k, v in snapshot.items() if "lora_B" in k), original)  # a snapshot, not a view
    assert torch.equal(weight, original)


def test_a_cache_folder_holds_the_wanted_piece_or_is_an_error(tmp_path):
    meta = tmp_path / "piece.json"
    assert not cache_matches(meta, {"seed": 0})
    write_json_atomic(meta, {"seed": 0, "seconds": 3})
    assert cache_matches(meta, {"seed": 0})
    with pytest.raises(DefenseError, match="other settings"):
        cache_matches(meta, {"seed": 1})


def test_bad_options_name_the_defense_and_the_option():
    with pytest.raises(DefenseError, match="x: option 'train_fraction'"):
        validated(FramingConfig, "x", {"train_fraction": 2})


def test_a_seeded_subset_keeps_the_order_and_the_draw():
    items = list(range(20))
    subset = seeded_subset(items, 5, random.Random(0))
    assert len(subset) == 5 and subset == sorted(subset)
    assert subset == seeded_subset(items, 5, random.Random(0)) != seeded_subset(items, 5, random.Random(1))
    assert seeded_subset(items, None, random.Random(0)) == items == seeded_subset(items, 20, random.Random(0))
