"""How well a router could tell harmful from benign prompts in each routed layer, by what it reads.

For each routed layer of BUNDLE a probe (the router warm start's class-balanced
L2 logistic regression) is fitted on the training split and scored on the
validation split (both with their framed copies, as the pipeline uses them),
on the base model's projection inputs at the last prompt token, reading:

- ``own``: the layer's own input (``router.reads`` "own", as MoGU);
- ``stack``: the inputs of the routed layers up to it (``router.reads`` "stack");
- ``every_layer_below``: the inputs of every decoder layer up to it (not an
  option of mogu: what reading still more layers would add).

Balanced validation accuracy per layer and reading, and their means, as JSON.
Validation split only: settings are chosen on it, so reading it is allowed.

    python benchmarks/router_input_probes.py runs/final25
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mogu.model import MoGUModel
from mogu.train.augment import framed_copies
from mogu.train.data import load_records
from mogu.train.pipeline import bundle_train_config
from mogu.train.layer_select import probe_separability, prompt_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = bundle_train_config(args.bundle)
    routed = json.loads((args.bundle / "layers.json").read_text(encoding="utf-8"))["selected"]
    records = framed_copies(load_records(args.bundle / "data.jsonl"), config.framing)
    # every layer routed, experts fresh: the probes read the base model's inputs of every projection
    model = MoGUModel.from_base(config.base, target_module=config.target_module, layers=config.layers,
                                expert=config.expert, router=config.router, dtype=config.dtype)
    readings = {
        "own": {layer: (layer,) for layer in routed},
        "stack": {layer: tuple(r for r in routed if r <= layer) for layer in routed},
        "every_layer_below": {layer: tuple(r for r in model.config.layers if r <= layer) for layer in routed},
    }
    items = {split: prompt_items(model, records, split, config.max_length) for split in ("train", "val")}
    probe = config.router_stage
    reads = {(name, layer): layers for name, by_layer in readings.items() for layer, layers in by_layer.items()}
    scores = probe_separability(model, items["train"], items["val"], probe.probe_l2, probe.probe_steps, reads)
    result: dict = {"bundle": str(args.bundle), "n": {split: len(v) for split, v in items.items()}}
    for name in readings:
        mine = {layer: score for (reading, layer), score in scores.items() if reading == name}
        result[name] = {**{str(layer): round(score, 3) for layer, score in mine.items()},
                        "mean": round(sum(mine.values()) / len(mine), 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
