"""Which layers to route: those whose inputs tell harmful from benign instructions apart best (MoGU v2).

MoGU puts experts and a router in every layer. On the default model the early
layers' inputs separate harmful from benign instructions worst (a linear probe
at the last prompt token: about 0.8-0.85 balanced validation accuracy in
layers 0-4, mostly 0.9-0.95 from layer 10 on; docs/ablations.md), yet the routed model's
behaviour is decided mostly there. MoGU v2 (arXiv 2509.06807) routes only the
layers with "highly classifiable security features". Here that is measured,
not guessed: a probe per layer is fitted on the training split and scored on
the validation split, on the base model (no expert is active, so the scores
do not depend on any later choice), and the best layers are kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TypeVar

from mogu.io.files import write_json_atomic
from mogu.model import MoGUModel
from mogu.model.probe import balanced_accuracy, fit_logistic
from mogu.model.targets import find_targets
from mogu.train.batches import Pair, tokenize_pairs
from mogu.train.config import TrainConfig
from mogu.train.data import Record, validation_records
from mogu.train.router_init import by_length, collect_router_inputs, router_features

log = logging.getLogger(__name__)
K = TypeVar("K")


def probe_separability(
    model: MoGUModel,
    train: list[tuple[Pair, bool]],
    val: list[tuple[Pair, bool]],
    l2: float,
    steps: int,
    reads: dict[K, tuple[int, ...]],
    target_module: str | None = None,
) -> dict[K, float]:
    """Balanced validation accuracy of a probe per entry of ``reads``, fitted on the training items.

    Each probe reads what a router reading those layers would (their
    RMS-normalised projection inputs at the last prompt token, concatenated),
    with every expert off. The layers need not be routed.
    """
    layers = sorted({layer for read in reads.values() for layer in read})
    train_x, train_y = collect_router_inputs(model, train, mode="base", layers=layers, target_module=target_module,
                                             desc="layer probes (train)")
    val_x, val_y = collect_router_inputs(model, val, mode="base", layers=layers, target_module=target_module,
                                         desc="layer probes (validation)")

    scores = {}
    for key, layers in reads.items():
        w, b = fit_logistic(router_features(train_x, layers), train_y, l2, steps)
        scores[key] = balanced_accuracy((router_features(val_x, layers) @ w + b > 0).long(), val_y.long())
    return scores


def best_layers(scores: dict[int, float], keep: int) -> list[int]:
    """The ``keep`` best-scoring layers (all of them if there are fewer), in model order; ties go to the deeper layer."""
    ranked = sorted(scores, key=lambda layer: (scores[layer], layer), reverse=True)
    return sorted(ranked[:keep])


def prompt_pairs(model: MoGUModel, records: list[Record], max_length: int) -> list[Pair]:
    """The records' prompts, tokenised for probes, in the order given."""
    # only the prompt is read: any one-token response will do
    return tokenize_pairs(model, [(r.instruction, ".") for r in records], max_length, 1).pairs


def prompt_items(model: MoGUModel, records: list[Record], split: str | None, max_length: int) -> list[tuple[Pair, bool]]:
    """The prompts of ``split`` (None: all of ``records``) with their benign labels, for probes (sorted by length)."""
    chosen = [r for r in records if split is None or r.split == split]
    return by_length([(pair, r.benign) for pair, r in zip(prompt_pairs(model, chosen, max_length), chosen)])


def select_routed_layers(model: MoGUModel, records: list[Record], config: TrainConfig, path: Path) -> list[int]:
    """Measure the candidate layers (``config.layers``, default all) on the base model, keep
    ``config.select_layers`` of them and record both in ``path`` (reused on resume)."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["selected"]
    validation = validation_records(records, config.validation, config.validation_per_label)
    split_items = {"train": prompt_items(model, records, "train", config.max_length),
                   "val": prompt_items(model, validation, None, config.max_length)}
    probe = config.router_stage
    candidates = [t.layer for t in find_targets(model.base_model, config.target_module, config.layers)]
    own = {layer: (layer,) for layer in candidates}
    scores = probe_separability(model, split_items["train"], split_items["val"], probe.probe_l2, probe.probe_steps, own,
                                config.target_module)
    selected = best_layers(scores, config.select_layers)
    log.info("routed layers (best %d by validation probe accuracy): %s; accuracy per layer %s", len(selected),
             selected, {k: round(v, 3) for k, v in scores.items()})
    write_json_atomic(path, {"selected": selected, "balanced_val_accuracy": scores})
    return selected
