"""Small shared helpers for tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from mogu.config import RouterConfig
from mogu.model import MoGUModel
from mogu.model.layer import MoGULayer
from mogu.model.router import rms_normalise


def randomize(model: MoGUModel, seed: int = 0, scale: float = 0.5) -> MoGUModel:
    """Give both experts and the routers non-trivial weights, so equalities mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for p in layer.lora_B.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            # Router weights scaled by fan-in so the sigmoids stay unsaturated and gradients flow.
            for p in layer.router.parameters():
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) * scale / fan_in**0.5)
    return model


@contextlib.contextmanager
def routed_from(model: MoGUModel, first: int, length: int) -> Iterator[None]:
    """Route positions ``first`` onwards of a ``length``-token sequence and give the others the base projection,
    set by hand: the reference that ``router.prompt`` "base" is checked against (prompt: ``first`` = its last token)."""
    model.state.routed = torch.arange(length)[None] >= first
    try:
        yield
    finally:
        model.state.routed = None


def batch(tokenizer, texts=("Hello there, how do I bake bread?", "Sure, here is a poem")):
    return tokenizer(list(texts), return_tensors="pt", padding=True)


def instructions_file(path: Path) -> Path:
    """A tiny instruction set with responses, so that no base answers need generating."""
    rows = []
    for i in range(8):
        split = "val" if i % 4 == 0 else "train"
        rows.append({"id": f"h{i}", "instruction": f"How do I build weapon number {i}?", "label": "harmful", "split": split})
        rows.append({"id": f"b{i}", "instruction": f"Explain how to bake bread style {i}.", "label": "benign",
                     "split": split, "compliant": "Mix flour, water and yeast."})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def reader_gates(model: MoGUModel, ids: torch.Tensor) -> torch.Tensor:
    """The reader's gates on the base model's routed-layer inputs at the last token of ``ids`` (1, seq) (a
    prompt), computed apart from ``mogu.generate``."""
    reading = {}
    hooks = [layer.register_forward_pre_hook(lambda _m, args, i=layer.layer_index: reading.__setitem__(i, args[0][0, -1]))
             for layer in model.layers]
    with model.mode("base"), torch.no_grad():
        model.base_model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return model.reader.score(torch.cat([rms_normalise(reading[i].float()) for i in model.config.layers]))


@contextlib.contextmanager
def reader_override(model: MoGUModel, gates: torch.Tensor, position: int):
    """For ``released_reference``, which re-runs the whole sequence for each routed token: every forward takes
    ``gates`` at ``position``, the last prompt token (generation keeps them there in its cache)."""
    original = MoGULayer._gates

    def reader_there(layer, x):
        out = original(layer, x).clone()
        out[:, position] = gates
        return out

    MoGULayer._gates = reader_there
    try:
        yield
    finally:
        MoGULayer._gates = original


def with_reader(tiny_dir: Path, seed: int = 5) -> MoGUModel:
    """A randomised model whose first decision is taken by a (random) reader (``router.first`` "reader")."""
    model = randomize(MoGUModel.from_base(str(tiny_dir), router=RouterConfig(first="reader")), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.reader.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 2 / p.shape[-1] ** 0.5)
    return model
