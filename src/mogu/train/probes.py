"""Probes on the base model: which layers to route (MoGU v2), and the first decision's reader.

Both are linear probes on one reading: the base model's projection inputs at
the last prompt token, with every expert off (so it depends on no later
choice). One pass over the probe prompts serves both.

Layers. MoGU puts experts and a router in every layer. On the default model
the early layers' inputs separate harmful from benign instructions worst
(about 0.8-0.85 balanced validation accuracy in layers 0-4, mostly 0.9-0.95
from layer 10 on; docs/ablations.md), yet the routed model's behaviour is
decided mostly there. MoGU v2 (arXiv 2509.06807) routes only the layers with
"highly classifiable security features". Here that is measured, not guessed: a
probe per candidate layer is fitted on the training prompts and scored on the
validation splits, and the best layers are kept.

Reader. Under ``router.first`` "reader" one probe over the inputs of every
candidate layer (``TrainConfig.reader_layers``) takes the first decision. The
probes read prompts only, so they are fitted on a larger draw of training
instructions (``probe_per_label``) than the stages train on, which need
responses: on the default model that moves the reader's held-out validation
figures more than any router setting did (docs/ablations.md, "What the first
decision's reader reads").
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file

from mogu.io.files import save_tensors_atomic, write_json_atomic
from mogu.model import MoGUModel
from mogu.model.probe import balanced_accuracy, fit_logistic
from mogu.model.targets import find_targets
from mogu.train.batches import Pair, tokenize_pairs
from mogu.train.config import TrainConfig
from mogu.train.data import Record
from mogu.train.router_init import by_length, collect_router_inputs, router_features

log = logging.getLogger(__name__)
K = TypeVar("K")
LAYERS_FILE = "layers.json"
READER_FILE = "reader.safetensors"


@dataclass
class ProbeChoice:
    """What the probes chose: the layers to route (None: every candidate), the layers the reader reads (None: the
    routed ones) and its weights (w, b) (None without a reader)."""

    routed: list[int] | None
    reader_layers: list[int] | None = None
    reader: tuple[torch.Tensor, torch.Tensor] | None = None


def best_layers(scores: dict[int, float], keep: int) -> list[int]:
    """The ``keep`` best-scoring layers (all of them if there are fewer), in model order; ties go to the deeper layer."""
    ranked = sorted(scores, key=lambda layer: (scores[layer], layer), reverse=True)
    return sorted(ranked[:keep])


def prompt_items(model: MoGUModel, records: list[Record], max_length: int) -> list[tuple[Pair, bool]]:
    """The records' prompts with their benign labels, tokenised for probes (sorted by length)."""
    # only the prompt is read: any one-token response will do
    pairs = tokenize_pairs(model, [(r.instruction, ".") for r in records], max_length, 1).pairs
    return by_length([(pair, r.benign) for pair, r in zip(pairs, records)])


def layer_scores(train: tuple[dict[int, torch.Tensor], torch.Tensor], val: tuple[dict[int, torch.Tensor], torch.Tensor],
                 reads: dict[K, tuple[int, ...]], l2: float, steps: int) -> dict[K, float]:
    """Balanced validation accuracy of a probe per entry of ``reads`` (layers whose inputs it reads, as a router
    reading them would: each RMS-normalised, concatenated), fitted on the training features."""
    scores = {}
    for key, layers in reads.items():
        w, b = fit_logistic(router_features(train[0], layers), train[1], l2, steps)
        scores[key] = balanced_accuracy((router_features(val[0], layers) @ w + b > 0).long(), val[1].long())
    return scores


def run_probes(model: MoGUModel, train: list[Record], validation: list[Record], config: TrainConfig,
               folder: Path) -> ProbeChoice:
    """Choose the routed layers (``config.select_layers`` of the candidates) and fit the first decision's reader
    on ``train``'s prompts, on the base model; recorded in ``folder`` (``LAYERS_FILE``, ``READER_FILE``) and
    read back from there on resume."""
    selecting, reading = config.select_layers is not None, config.router.first == "reader"
    path = folder / LAYERS_FILE
    if not (selecting or reading):
        return ProbeChoice(config.layers)
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        state = load_file(str(folder / READER_FILE)) if reading else None
        return ProbeChoice(saved["selected"], saved.get("reader_layers"), (state["w"], state["b"]) if state else None)
    probe = config.router_stage
    candidates = [t.layer for t in find_targets(model.base_model, config.target_module, config.layers)]
    features = collect_router_inputs(model, prompt_items(model, train, config.max_length), mode="base",
                                     layers=candidates, target_module=config.target_module, desc="probes (train)")
    record: dict = {"selected": candidates, "probe_instructions": len(train)}
    if selecting:
        val = collect_router_inputs(model, prompt_items(model, validation, config.max_length), mode="base",
                                    layers=candidates, target_module=config.target_module, desc="probes (validation)")
        scores = layer_scores(features, val, {layer: (layer,) for layer in candidates}, probe.probe_l2,
                              probe.probe_steps)
        record["selected"] = best_layers(scores, config.select_layers or len(candidates))
        record["balanced_val_accuracy"] = scores
        log.info("routed layers (best %d by validation probe accuracy): %s; accuracy per layer %s",
                 len(record["selected"]), record["selected"], {k: round(v, 3) for k, v in scores.items()})
    choice = ProbeChoice(record["selected"])
    if reading:
        read = candidates if config.reader_layers == "candidates" else record["selected"]
        choice.reader_layers = read if config.reader_layers == "candidates" else None
        x = router_features(features[0], tuple(read))
        w, b = fit_logistic(x, features[1], probe.probe_l2, probe.probe_steps)
        choice.reader = (w, torch.tensor([b]))
        record["reader_layers"] = choice.reader_layers
        record["reader_train_accuracy"] = float(((x @ w + b > 0).float() == features[1]).float().mean())
        log.info("first decision's reader over layers %s: accuracy %.3f on %d training prompts", read,
                 record["reader_train_accuracy"], len(train))
        save_tensors_atomic(folder / READER_FILE, {"w": w, "b": choice.reader[1]})
    write_json_atomic(path, record)  # last: it marks the step done
    return choice
