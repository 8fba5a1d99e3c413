"""Small shared helpers for tests."""

from __future__ import annotations

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


def batch(tokenizer, texts=("Hello there, how do I bake bread?", "Sure, here is a poem")):
    return tokenizer(list(texts), return_tensors="pt", padding=True)
