"""How well the top router's reading could separate harmful from benign prompts at best: cross-validated.

The last routed layer's router (``router.reads`` "stack") scores the inputs of
every routed layer at the token it routes. A linear probe on exactly that (the
router warm start's class-balanced L2 logistic regression, on the base model's
projection inputs at the last prompt token) is fitted and scored with k-fold
cross-validation over BUNDLE's training and validation instructions together;
an instruction and its framed copy always fall in the same fold. The figures
are what one linear reading of these features achieves on instructions it was
not fitted on, before anything the routed model itself adds or loses (six
routers deciding, experts mixing, generation). Seed test split not read.
Prints JSON: harmful / benign (benign and borderline) refused at the probe's
own threshold, plain and framed.

    python benchmarks/probe_ceiling.py runs/final27 [--folds 5] [--layers 0 1 ... 27]
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from pathlib import Path

import torch

from mogu.model import MoGUModel
from mogu.probe import fit_logistic
from mogu.train.augment import framed_copies
from mogu.train.data import load_records
from mogu.train.layer_select import prompt_pairs
from mogu.train.pipeline import bundle_train_config
from mogu.train.router_init import collect_router_inputs, router_features


def refused(scores: torch.Tensor, benign: torch.Tensor) -> dict[str, float]:
    """Refusal rates of a probe whose negative score means harmful."""
    harmful_refusal = float((scores[~benign] < 0).float().mean())
    benign_refusal = float((scores[benign] < 0).float().mean())
    return {"n": len(scores), "harmful_refusal": round(harmful_refusal, 4), "benign_refusal": round(benign_refusal, 4),
            "balanced": round((harmful_refusal + 1 - benign_refusal) / 2, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--layers", type=int, nargs="+", help="read these decoder layers' inputs instead of the "
                        "routed ones (what a reading the routers cannot have would add)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = bundle_train_config(args.bundle)
    routed = tuple(args.layers or json.loads((args.bundle / "layers.json").read_text(encoding="utf-8"))["selected"])
    records = [r for r in framed_copies(load_records(args.bundle / "data.jsonl"), config.framing) if r.split != "test"]
    records.sort(key=lambda r: len(r.instruction))  # batches of similar length: less padding
    model = MoGUModel.from_base(config.base, target_module=config.target_module, layers=list(routed),
                                expert=config.expert, router=config.router, dtype=config.dtype)
    pairs = prompt_pairs(model, records, config.max_length)
    features, benign = collect_router_inputs(model, [(p, r.benign) for p, r in zip(pairs, records)], positions=1,
                                             mode="base")
    x, benign = router_features(features, routed), benign.bool()
    fold = torch.tensor([zlib.crc32(r.id.split("~")[0].encode()) % args.folds for r in records])
    scores = torch.empty(len(records))
    probe = config.router_stage
    for k in range(args.folds):
        w, b = fit_logistic(x[fold != k], benign[fold != k].float(), probe.probe_l2, probe.probe_steps)
        scores[fold == k] = x[fold == k] @ w + b
    framed = torch.tensor(["~" in r.id for r in records])
    result = {"bundle": str(args.bundle), "reads": list(routed), "folds": args.folds,
              "plain": refused(scores[~framed], benign[~framed]), "framed": refused(scores[framed], benign[framed])}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
