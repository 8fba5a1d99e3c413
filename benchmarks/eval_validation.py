"""A bundle's MoGU refusal rates on validation instructions chosen by another run. Prints JSON.

Bundles trained on different data, or selected on different splits, report their own validation draws in
``evaluation.json``; this answers the reference run's draws (``evaluation_records`` of its saved config, the
test split left out) with ``bundle``, so that both are compared on the same instructions, greedy, 48 tokens,
keyword judge.

With ``--unselected N`` it answers instead the next N plain instructions of each label of each validation
split in the stable order, after the ``validation_per_label`` ones the reference run's selection read: validation
instructions that chose nothing in either run (when both select on the same draw size).

    python benchmarks/eval_validation.py OLD_BUNDLE --reference NEW_BUNDLE [--unselected 30]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from mogu.model import MoGUModel
    from mogu.train.data import VALIDATION_SPLITS, load_records, source_id, stable_draw
    from mogu.train.pipeline import bundle_train_config, evaluation_records, split_refusal_rates

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--reference", required=True, help="a bundle whose draws are answered")
    parser.add_argument("--unselected", type=int, metavar="N",
                        help="answer N instructions per label and validation split that the reference's selection "
                             "did not read, instead of its evaluation draws")
    args = parser.parse_args()
    config = bundle_train_config(Path(args.reference))
    records = load_records(config.data)
    if args.unselected:
        plain = [r for r in records if source_id(r) == r.id]
        read = config.validation_per_label or 0
        splits = {}
        for split in VALIDATION_SPLITS:
            selected = {r.id for r in stable_draw(plain, [split], read)}
            splits[split] = [r for r in stable_draw(plain, [split], read + args.unselected) if r.id not in selected]
        splits = {split: chosen for split, chosen in splits.items() if chosen}
    else:
        splits = evaluation_records(records, config)
        splits.pop("test", None)
    model = MoGUModel.from_pretrained(args.bundle)
    result = split_refusal_rates(model, splits, config.eval_max_new_tokens, modes=("mogu",))
    print(json.dumps({"bundle": args.bundle, "reference": args.reference, "unselected": args.unselected,
                      "splits": result}, indent=2))


if __name__ == "__main__":
    main()
