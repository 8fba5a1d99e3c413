"""``detect-input``: a logistic-regression probe on the base model's last-token hidden state flags harmful prompts,
which get a fixed refusal; the base model answers the rest."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mogu.eval.defenses.base import (
    Defense,
    Options,
    cache_matches,
    own_folder,
    seeded_subset,
    train_and_val,
    validated,
)
from mogu.eval.suites import Prompt
from mogu.io.files import save_tensors_atomic, write_json_atomic
from mogu.io.provenance import provenance
from mogu.model import MoGUModel
from mogu.model.chat import ChatInput
from mogu.model.config import DecodingConfig
from mogu.model.generation import encode_prompts
from mogu.model.probe import balanced_accuracy, fit_logistic
from mogu.train.augment import framed_copies
from mogu.train.config import FramingConfig
from mogu.train.data import load_records

log = logging.getLogger(__name__)

REFUSAL_TEXT = "I'm sorry, but I can't help with that."
PROBE_WEIGHTS, PROBE_META = "probe.safetensors", "probe.json"


@dataclass
class LinearProbe:
    """Logistic regression on standardised hidden states of one layer: P(harmful)."""

    layer: int
    weight: torch.Tensor  # (d,)
    bias: float
    mean: torch.Tensor  # (d,)
    std: torch.Tensor  # (d,)

    def probability(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.float() - self.mean) / self.std
        return torch.sigmoid(x @ self.weight + self.bias)

    def save(self, directory: Path, meta: dict[str, Any]) -> None:
        """Weights, then the metadata that says they are complete: each file is written atomically, and a folder
        without ``probe.json`` holds no probe (``load`` is never asked for one)."""
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(directory / PROBE_WEIGHTS, {"weight": self.weight, "mean": self.mean, "std": self.std,
                                                        "bias": torch.tensor([self.bias])})
        write_json_atomic(directory / PROBE_META, {**meta, "layer": self.layer})

    @classmethod
    def load(cls, directory: Path) -> LinearProbe:
        tensors = load_file(str(directory / PROBE_WEIGHTS))
        layer = json.loads((directory / PROBE_META).read_text(encoding="utf-8"))["layer"]
        return cls(layer, tensors["weight"], float(tensors["bias"][0]), tensors["mean"], tensors["std"])


def fit_probe(features: torch.Tensor, labels: torch.Tensor, layer: int, l2: float = 1e-2, steps: int = 100) -> LinearProbe:
    """Class-balanced L2-regularised logistic regression (``mogu.model.probe``) on standardised features."""
    x = features.float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    w, b = fit_logistic((x - mean) / std, labels, l2, steps)
    return LinearProbe(layer, w, b, mean, std)


@torch.no_grad()
def last_token_states(model: MoGUModel, chats: Sequence[ChatInput], layers: Sequence[int], batch_size: int = 16) -> dict[int, torch.Tensor]:
    """The base model's hidden state at the last prompt token (``hidden_states[layer]``; 0 = embeddings)."""
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(chats), batch_size):
        enc = encode_prompts(model, chats[start : start + batch_size], 0)
        with model.mode("base"):
            states = model.base_model(**enc, output_hidden_states=True).hidden_states
        for layer in layers:
            out[layer].append(states[layer][:, -1].float().cpu())  # left padding: -1 is the last prompt token
    return {layer: torch.cat(parts) for layer, parts in out.items()}


class InputDetector(Defense):
    """Detect_inp: a linear probe flags harmful prompts, which get a fixed refusal; the base model answers the rest.

    The probe is trained on the train split (harmful vs benign + borderline)
    at each candidate layer (the middle half of the decoder layers by default)
    and the layer with the best balanced accuracy on the val split is kept.
    """

    name = "detect-input"

    def __init__(self, model: MoGUModel, cache_dir: str | Path, data: str | Path | None = None,
                 layers: Sequence[int] | None = None, threshold: float = 0.5, l2: float = 1e-2,
                 refusal: str = REFUSAL_TEXT, batch_size: int = 16, max_examples: int | None = None, seed: int = 0,
                 framing: FramingConfig | dict[str, float] | None = None, probe: LinearProbe | None = None) -> None:
        super().__init__(model)
        self.cache_dir = Path(cache_dir)
        self.data = Path(data) if data is not None else None
        self.layers = list(layers) if layers is not None else None
        self.threshold, self.l2, self.refusal, self.batch_size = float(threshold), float(l2), refusal, int(batch_size)
        self.max_examples, self.seed = max_examples, int(seed)
        # the framed copies mogu train adds (the evaluation passes a bundle's own setting)
        self.framing = (framing if isinstance(framing, FramingConfig)
                        else validated(FramingConfig, "detect-input: framing", framing or {}))
        self.probe = probe
        self.forced = probe is not None

    @classmethod
    def from_options(cls, model: MoGUModel, options: Options, cache_dir: Path) -> InputDetector:
        folder, own = own_folder(cls.name, options, cache_dir)
        return cls(model, folder, **own)

    def candidate_layers(self) -> list[int]:
        if self.layers is not None:
            return self.layers
        n = self.model.base_model.config.num_hidden_layers
        return list(range(max(1, n // 4), max(2, 3 * n // 4 + 1)))

    def params(self) -> dict[str, Any]:
        return {**self._wanted(exclude_base=True), "threshold": self.threshold, "refusal": self.refusal,
                "forced_probe": self.forced}

    def _wanted(self, exclude_base: bool = False) -> dict[str, Any]:
        wanted = {"data": str(self.data) if self.data else None, "layers": self.candidate_layers(), "l2": self.l2,
                  "max_examples": self.max_examples, "seed": self.seed, "framing": self.framing.model_dump()}
        return wanted if exclude_base else {**wanted, "base_fingerprint": self.model.config.base.fingerprint}

    def info(self) -> dict[str, Any]:
        meta = self.cache_dir / PROBE_META
        if self.forced or not meta.is_file():
            return {"layer": self.probe.layer} if self.probe is not None else {}
        saved = json.loads(meta.read_text(encoding="utf-8"))
        return {k: saved.get(k) for k in ("layer", "val_balanced_accuracy", "train_examples", "seconds")}

    def prepare(self) -> None:
        if self.probe is not None:
            return
        if cache_matches(self.cache_dir / PROBE_META, self._wanted()):
            self.probe = LinearProbe.load(self.cache_dir)
            return
        self.probe = self._train()

    def _train(self) -> LinearProbe:
        started = time.perf_counter()
        train, val = train_and_val(self.name, framed_copies(load_records(self.data), self.framing))
        train = seeded_subset(train, self.max_examples, random.Random(self.seed))
        layers = self.candidate_layers()
        x_train = last_token_states(self.model, [r.instruction for r in train], layers, self.batch_size)
        x_val = last_token_states(self.model, [r.instruction for r in val], layers, self.batch_size)
        y_train = torch.tensor([not r.benign for r in train], dtype=torch.long)
        y_val = torch.tensor([not r.benign for r in val], dtype=torch.long)
        middle = (layers[0] + layers[-1]) / 2
        best, best_key, scores = None, None, {}
        for layer in layers:
            probe = fit_probe(x_train[layer], y_train, layer, self.l2)
            accuracy = balanced_accuracy((probe.probability(x_val[layer]) >= self.threshold).long(), y_val)
            scores[layer] = round(accuracy, 4)
            key = (accuracy, -abs(layer - middle))
            if best_key is None or key > best_key:
                best, best_key = probe, key
        assert best is not None
        best.save(self.cache_dir, {**self._wanted(), "val_balanced_accuracy": scores[best.layer], "val_by_layer": scores,
                                   "train_examples": len(train), "seconds": round(time.perf_counter() - started, 1),
                                   "provenance": provenance()})
        log.info("detect-input: layer %d, balanced accuracy on val %.3f", best.layer, scores[best.layer])
        return best

    def flags(self, prompts: Sequence[Prompt]) -> list[bool]:
        """True for prompts the probe calls harmful."""
        self.prepare()
        assert self.probe is not None
        states = last_token_states(self.model, [p.text for p in prompts], [self.probe.layer], self.batch_size)
        return (self.probe.probability(states[self.probe.layer]) >= self.threshold).tolist()

    def generate(self, prompts: Sequence[Prompt], decoding: DecodingConfig) -> list[str]:
        if not prompts:
            return []
        flagged = self.flags(prompts)
        answers = [self.refusal if f else "" for f in flagged]
        rest = [i for i, f in enumerate(flagged) if not f]
        if rest:
            results = self.model.generate([prompts[i].text for i in rest], decoding.model_copy(update={"mode": "base"}))
            for i, result in zip(rest, results):
                answers[i] = result.text
        return answers
