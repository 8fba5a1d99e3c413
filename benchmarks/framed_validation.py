"""How a bundle answers its validation instructions plain and inside a framing it never trained on.

Every validation instruction of BUNDLE's ``data.jsonl`` is measured twice with
the routed model (the router stage's own validation, ``stages.routed_validation``):
as written, and wrapped in one of the validation framings of
``mogu.train.augment`` (role-play, fiction, pressure; never used in training).
Validation split only: this is a split settings are chosen on, so reading it
is allowed; the seed test split is not framed. Prints JSON.

``--attack FILE`` adds a third measurement: every validation instruction inside
one of FILE's long persuasive framings (``benchmarks/data/attack_framings.json``,
written for the project: emotional appeals, claimed authority, invented rules,
false continuity ...; a stable one per instruction), closer to automated
persuasion attacks than the short framings above.

``--max-new-tokens N --routed-tokens M`` answer with N tokens, the first M
routed, instead of the router stage's validation decoding (10 tokens, the
bundle's routed tokens): longer answers show a refusal that the base model
turns into the answer after the routed tokens (docs/TRAINING.md, "Refusals
that turn into answers").

    python benchmarks/framed_validation.py runs/final20 [--data OTHER_BUNDLE/data.jsonl] [--attack FILE]
    python benchmarks/framed_validation.py runs/final29 --max-new-tokens 32 --routed-tokens 12
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mogu.model import MoGUModel
from mogu.train.augment import framed_copies, framed_copy
from mogu.train.config import FramingConfig
from mogu.train.data import Record, load_records
from mogu.train.pipeline import bundle_train_config
from mogu.train.stages import router_decoding, routed_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, help="take the validation instructions from this data.jsonl instead of "
                        "the bundle's own (to compare bundles trained on different data on one split)")
    parser.add_argument("--attack", type=Path, help="also measure the validation instructions inside these long "
                        "persuasive framings (a JSON object: name -> template with {request})")
    parser.add_argument("--max-new-tokens", type=int, help="answer length (default: the router stage's validation)")
    parser.add_argument("--routed-tokens", type=int, help="tokens routed (default: the bundle's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = bundle_train_config(args.bundle)
    val = [r for r in load_records(args.data or args.bundle / "data.jsonl") if r.split == "val"]
    every = FramingConfig(train_fraction=0.0, val_fraction=1.0)
    framed = framed_copies(val, every)[len(val) :]  # one copy of every validation instruction
    model = MoGUModel.from_pretrained(args.bundle, dtype=config.dtype)  # its training setting
    suites = {"plain": val, "framed": framed}
    if args.attack:
        suites["attack"] = attacked(val, json.loads(args.attack.read_text(encoding="utf-8")))
    decoding = router_decoding(config)
    if args.max_new_tokens is not None or args.routed_tokens is not None:
        decoding = decoding.model_copy(update={"max_new_tokens": args.max_new_tokens or decoding.max_new_tokens,
                                               "routed_tokens": args.routed_tokens or decoding.routed_tokens})
    result = {name: routed_validation(model, records, decoding) for name, records in suites.items()}
    result["n"] = {name: len(records) for name, records in suites.items()}
    print(json.dumps(result, indent=2))


def attacked(records: list[Record], framings: dict[str, str]) -> list[Record]:
    """Each record inside one of ``framings``, chosen by a stable hash of its id."""
    return [framed_copy(r, sorted(framings.items()), "~attack") for r in records]


if __name__ == "__main__":
    main()
