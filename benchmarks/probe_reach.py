"""What the first decision's reader reaches on the validation splits, by training prompts and layers read. Prints JSON.

A linear probe (``mogu.model.probe.fit_logistic``, the reader's) on the base model's projection inputs at the
last prompt token, fitted on a stable draw of N training instructions of each label (with their framed
copies, as training reads them) and applied at threshold 0 to every instruction of each validation split
(plain and framed). It measures the reader alone, before any expert or router: the share of each label it
sends to the unwilling expert, in %.

    python benchmarks/probe_reach.py --per-label 150,300,600,1000,all --reads routed=12,17,18,21,25,27 --reads all
"""

from __future__ import annotations

import argparse
import json


def parse_reads(spec: str, layer_count: int) -> tuple[str, list[int]]:
    """``NAME=L1,L2,...`` or ``all`` -> (name, layers)."""
    if spec == "all":
        return "all", list(range(layer_count))
    name, _, layers = spec.partition("=")
    return name, [int(x) for x in layers.split(",")]


def main() -> None:
    import torch

    from mogu.model import MoGUModel
    from mogu.model.probe import fit_logistic
    from mogu.model.targets import find_targets
    from mogu.train.augment import framed_copies
    from mogu.train.batches import tokenize_pairs
    from mogu.train.config import TrainConfig
    from mogu.train.data import LABELS, VALIDATION_SPLITS, load_records, source_id, stable_draw
    from mogu.train.router_init import collect_router_inputs, router_features

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--data", default=None, help="instructions file (default: the packaged set)")
    parser.add_argument("--per-label", default="150,600,all", help="training instructions of each label, comma-separated")
    parser.add_argument("--reads", action="append", help="NAME=layers or 'all' (repeatable; default: all)")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    config = TrainConfig()
    model = MoGUModel.from_base(args.base, layers=[], dtype=args.dtype)
    reads = dict(parse_reads(spec, len(find_targets(model.base_model, None, None))) for spec in (args.reads or ["all"]))
    sizes = [None if s == "all" else int(s) for s in args.per_label.split(",")]
    records = load_records(args.data)
    largest = None if None in sizes else max(sizes)
    rows = framed_copies(stable_draw(records, ["train"], largest, salt="~train"), config.framing)
    rows += framed_copies([r for r in records if r.split in VALIDATION_SPLITS], config.framing)
    rows.sort(key=lambda r: len(r.instruction))  # batches of similar length; the features keep this order
    pairs = tokenize_pairs(model, [(r.instruction, ".") for r in rows], config.max_length, 1).pairs
    x, y = collect_router_inputs(model, [(p, r.benign) for p, r in zip(pairs, rows)], mode="base",
                                 layers=sorted({layer for layers in reads.values() for layer in layers}), desc="prompts")

    def mask(keep) -> torch.Tensor:
        return torch.tensor([bool(keep(r)) for r in rows])

    result: dict = {"base": args.base, "dtype": args.dtype, "threads": torch.get_num_threads(), "reads": reads,
                    "refused_percent": {}}
    for size in sizes:
        drawn = {r.id for r in stable_draw(records, ["train"], size, salt="~train")}
        train = mask(lambda r: r.split == "train" and source_id(r) in drawn)
        for name, layers in reads.items():
            features = router_features(x, tuple(layers))
            w, b = fit_logistic(features[train], y[train], config.router_stage.probe_l2, config.router_stage.probe_steps)
            flagged = features @ w + b < 0  # sent to the unwilling expert
            key = f"{name}, {size or 'all'} per label ({int(train.sum())} prompts)"
            result["refused_percent"][key] = {
                split: {label: round(100 * float(flagged[m].float().mean()), 1)
                        for label in LABELS if (m := mask(lambda r: r.split == split and r.label == label)).any()}
                for split in VALIDATION_SPLITS}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
