"""Finding the projection to route in each decoder layer of a stock model.

MoGU routes the attention output projection. Known architectures are listed
by ``model_type``; anything else is searched: the decoder layers are the
ModuleList whose length is ``num_hidden_layers``, and in each layer the
attention block's output projection is the one named like an output
projection (o_proj, out_proj, dense, c_proj, wo).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from mogu.model.layer import projection_features

# model_type -> attention output projection, relative to a decoder layer
KNOWN_TARGETS: dict[str, str] = {
    "llama": "self_attn.o_proj",
    "mistral": "self_attn.o_proj",
    "mixtral": "self_attn.o_proj",
    "qwen2": "self_attn.o_proj",
    "qwen3": "self_attn.o_proj",
    "gemma": "self_attn.o_proj",
    "gemma2": "self_attn.o_proj",
    "gemma3_text": "self_attn.o_proj",
    "phi3": "self_attn.o_proj",
    "phi": "self_attn.dense",
    "olmo2": "self_attn.o_proj",
    "granite": "self_attn.o_proj",
    "gpt2": "attn.c_proj",
    "falcon": "self_attention.dense",
    "gpt_neox": "attention.dense",
    "gptj": "attn.out_proj",
    "opt": "self_attn.out_proj",
}
_OUTPUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo")
_ATTENTION_HINT = re.compile(r"attn|attention", re.IGNORECASE)


class TargetNotFoundError(ValueError):
    """No routable projection could be found in a model."""


@dataclass(frozen=True)
class Target:
    """One routed projection: its full module name (``target_module`` inside decoder layer ``layer``, as a bundle's
    ``target_modules`` list it) and the decoder-layer index."""

    full_name: str
    layer: int


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder layers (name and module)."""
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers)
    ]
    if not candidates:
        raise TargetNotFoundError(
            f"no decoder layers found in {type(model).__name__}: no ModuleList of length {n_layers}"
        )
    return min(candidates, key=lambda item: item[0].count("."))  # the outermost list


def _search_output_projection(layer: nn.Module) -> str | None:
    for name, module in layer.named_modules():
        parts = name.split(".")
        if len(parts) < 2 or parts[-1] not in _OUTPUT_NAMES:
            continue
        if not any(_ATTENTION_HINT.search(p) for p in parts[:-1]):
            continue
        try:
            projection_features(module)
        except TypeError:
            continue
        return name
    return None


def find_targets(model: nn.Module, target_module: str | None = None, layers: list[int] | None = None) -> list[Target]:
    """The projections to route, one per selected decoder layer.

    ``target_module`` names the projection inside a decoder layer (e.g. ``"self_attn.o_proj"``; default: the
    architecture's);
    ``layers`` restricts routing to those decoder-layer indices.
    """
    list_name, decoder = decoder_layers(model)
    model_type = getattr(model.config, "model_type", "")
    target_module = target_module or KNOWN_TARGETS.get(model_type) or _search_output_projection(decoder[0])
    if target_module is None:
        raise TargetNotFoundError(
            f"no attention output projection found for model_type {model_type!r} "
            f"({type(model).__name__}); name it explicitly with target_module='<name inside a decoder layer>'"
        )
    selected = range(len(decoder)) if layers is None else layers
    targets: list[Target] = []
    for index in selected:
        if not 0 <= index < len(decoder):
            raise TargetNotFoundError(f"layer index {index} out of range: the model has {len(decoder)} decoder layers")
        try:
            module = decoder[index].get_submodule(target_module)
            projection_features(module)
        except (AttributeError, TypeError) as err:
            raise TargetNotFoundError(f"decoder layer {index} has no routable projection {target_module!r}: {err}") from err
        targets.append(Target(f"{list_name}.{index}.{target_module}", index))
    return targets
