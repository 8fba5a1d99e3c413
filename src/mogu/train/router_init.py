"""Warm start of the routers: a linear probe per layer, fitted on the router's own inputs.

Trained from a blank start with CE + alpha * gate loss, the routers hardly move
in the few hundred steps a CPU budget allows: they drift towards "mostly glad"
everywhere instead of separating harmful from benign (gate accuracy ~0.6 on
the default model). Yet each router is only a linear scorer on the input of
its projection, i.e. a linear probe, and harmful vs benign instructions are
linearly separable there. So before the router stage the inputs each router
sees at the first decision position(s) are collected in one forward pass, a logistic
regression is fitted per layer on what its router scores (its own input, or
under ``router.reads`` "stack" the routed layers' inputs up to its own;
glad scorer: benign, unwill scorer: harmful),
and the result is written into the routers (``Router.set_linear``, exact for
both router shapes). The router stage then fine-tunes from there with the
method's loss, and validation decides which checkpoint is kept (the warm start
itself included).
"""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from mogu.model.config import Mode
from mogu.model.kv_cache import decoder_inputs, read_prefix, shared_prefix_length
from mogu.model import MoGUModel
from mogu.model.router import rms_normalise
from mogu.model.probe import fit_logistic
from mogu.train.batches import Pair, collate

log = logging.getLogger(__name__)


def by_length(items: list[tuple[Pair, bool]]) -> list[tuple[Pair, bool]]:
    """The items sorted by length, so that batches need little padding (the probes ignore order)."""
    return sorted(items, key=lambda item: len(item[0].prompt) + len(item[0].response))


def collect_router_inputs(
    model: MoGUModel, items: list[tuple[Pair, bool]], batch_size: int = 16, mode: Mode = "mogu",
    layers: list[int] | None = None, target_module: str | None = None, desc: str = "router inputs",
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Router inputs (the inputs of the routed projections) at the first decision position, the last prompt
    token, whose gates choose the first response token (later positions see the teacher-forced response, whose
    wording gives the label away).

    Returns ({layer: (N, d) float32}, benign labels (N,)). Collected in
    ``mode``: ``mogu`` with the routers as they are (fresh routers give
    weights 0.5), ``base`` for what the routers of an expert-free model see. ``layers`` (and
    ``target_module``): the inputs of those layers' target projections, routed or not (default: the routed
    layers). ``desc`` names the progress bar.
    """
    current: dict[str, torch.Tensor] = {}
    labels = []

    def pick(h: torch.Tensor) -> torch.Tensor:
        return h[current["rows"], current["cols"]].detach().float().cpu()

    # where no expert reads the prompt, the prefix every prompt of a batch shares is read once
    shares_prefix = mode == "base" or model.config.router.prompt == "base"
    with model.routed_inputs(pick, layers, target_module) as captured, torch.no_grad():
        for start in tqdm(range(0, len(items), batch_size), desc=desc, unit="batch"):
            chunk = items[start : start + batch_size]
            # the model is causal, so the response beyond its first token need not be run (that token is
            # kept as a label: the labels mark the decision positions)
            counts = [min(1, len(pair.response)) for pair, _ in chunk]
            batch = {k: v.to(model.device) for k, v in collate(
                [Pair(pair.prompt, pair.response[:n]) for (pair, _), n in zip(chunk, counts)],
                model.tokenizer.pad_token_id).items()}
            shared = shared_prefix_length([pair.prompt for pair, _ in chunk], keep=1) if shares_prefix else 0
            current["rows"] = current["cols"] = torch.tensor([], dtype=torch.long)  # nothing of the prefix is picked
            with model.mode("base"):
                prefix = read_prefix(model.base_model, batch["input_ids"][:1, :shared], len(chunk)) if shared else None
            rows, cols = [], []
            for row, ((pair, benign), n) in enumerate(zip(chunk, counts)):
                first = len(pair.prompt) - 1 - shared  # the last prompt token chooses the first response token
                rows += [row] * n
                cols += range(first, first + n)
                labels += [benign] * n
            current["rows"], current["cols"] = torch.tensor(rows), torch.tensor(cols)
            # the decoder stack only: the vocabulary projection would be wasted work
            with model.mode(mode, labels=batch["labels"][:, shared:]):
                model.base_model.base_model(**decoder_inputs(model.base_model, batch["input_ids"][:, shared:],
                                                             batch["attention_mask"], prefix))
    return {k: torch.cat(v) for k, v in captured.items()}, torch.tensor(labels, dtype=torch.float32)


def router_features(features: dict[int, torch.Tensor], layers: tuple[int, ...]) -> torch.Tensor:
    """What a router reading ``layers`` scores, from ``collect_router_inputs``' features: their inputs, each
    RMS-normalised, concatenated in order."""
    return torch.cat([rms_normalise(features[layer]) for layer in layers], dim=-1)


def warm_start_routers(model: MoGUModel, items: list[tuple[Pair, bool]], l2: float, steps: int) -> dict:
    """Fit and install a probe per layer on the inputs it reads; returns each probe's training accuracy."""
    if not model.config.router.input_norm:
        raise ValueError("the router warm start fits RMS-normalised inputs; set router.input_norm = true or disable probe_init")
    accuracy: dict[int, float] = {}
    items = by_length(items)
    features, benign = collect_router_inputs(model, items, desc="router warm start")
    for layer in model.layers:
        x = router_features(features, layer.reads)
        w, b = fit_logistic(x, benign, l2, steps)
        layer.router.set_linear(unwill=(-w, -b), glad=(w, b))
        accuracy[layer.layer_index] = float(((x @ w + b > 0).float() == benign).float().mean())
    log.info("router warm start: probe accuracy per layer (train) min %.3f, mean %.3f, max %.3f",
             min(accuracy.values()), sum(accuracy.values()) / len(accuracy), max(accuracy.values()))
    return accuracy
