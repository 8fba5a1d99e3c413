"""Small shared helpers for tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from mogu.model import MoGUModel


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
