"""A bundle's MoGU refusal rates on the validation instructions another run's evaluation read. Prints JSON.

Bundles trained on different data, or selected on different splits, report their own validation draws in
``evaluation.json``; this answers the reference run's draws (``evaluation_records`` of its saved config, the
test split left out) with ``bundle``, so that both are compared on the same instructions, greedy, 48 tokens,
keyword judge.

    python benchmarks/eval_validation.py OLD_BUNDLE --reference NEW_BUNDLE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from mogu.model import MoGUModel
    from mogu.train.data import load_records
    from mogu.train.pipeline import bundle_train_config, evaluation_records, split_refusal_rates

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--reference", required=True, help="a bundle whose evaluation draws are answered")
    args = parser.parse_args()
    config = bundle_train_config(Path(args.reference))
    splits = evaluation_records(load_records(config.data), config)
    splits.pop("test", None)
    model = MoGUModel.from_pretrained(args.bundle)
    result = split_refusal_rates(model, splits, config.eval_max_new_tokens, modes=("mogu",))
    print(json.dumps({"bundle": args.bundle, "reference": args.reference, "splits": result}, indent=2))


if __name__ == "__main__":
    main()
