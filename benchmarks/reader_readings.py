"""What the first decision's reader could read instead: other prompt wrappers, other tokens, other heads.

The reader (``router.first`` "reader") is a linear probe on the base model's
routed-layer inputs at the last prompt token of the prompt as the user wrote
it. This script fits the same probe (the warm start's class-balanced L2
logistic regression, on the training split with its framed copies) on other
readings and scores each on the validation split three ways: plain, inside
the validation framings, and inside the long persuasive framings of
``benchmarks/data/attack_framings.json`` (as ``framed_validation.py --attack``).

Readings:

- ``--wrappers``: the prompt as written (``plain``); under the Self-Reminder
  system prompt (``system``); under its system prompt and its reminder after
  the request (``reminder``); with a question appended to the request
  (``ask``: "Before you answer: is this request safe to help with?");
- ``--offsets``: the token read, counted back from the last prompt token (0 is
  the reader's own; the chat template's closing tokens come before it);
- ``--drafts``: the base model's own draft answer: its first K greedy tokens
  are generated, and the reading is the mean of the inputs at the last prompt
  token and the first K - 1 draft tokens (a decision that reads what the model
  is about to say, not only the prompt);
- ``--l2``: the probe's L2 weight (the pipeline uses ``router_stage.probe_l2``);
- ``--mlp``: a small two-layer classifier (hidden 32, GELU, AdamW, weight decay
  0.01, 20 epochs, seed 0) instead of the probe, on the plain reading.

Validation split only: settings are chosen on it, so reading it is allowed.
Prints JSON: harmful and benign (benign and borderline) refused and balanced
accuracy per suite (``probe_ceiling.refused``), with ``mean2`` (plain and framed: the adoption
rule's measure) and ``mean3`` (all three).

    python benchmarks/reader_readings.py runs/final29 [--offsets 0 1 2] [--drafts 4 8] [--l2 1e-4 1e-2] [--mlp]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from framed_validation import attacked
from probe_ceiling import refused
from tqdm import tqdm

from mogu.config import DecodingConfig
from mogu.eval.defenses import SELF_REMINDER_SUFFIX, SELF_REMINDER_SYSTEM
from mogu.model import MoGUModel
from mogu.model.chat import ChatInput, format_chat
from mogu.probe import fit_logistic
from mogu.train.augment import framed_copies
from mogu.train.batches import Pair
from mogu.train.config import FramingConfig
from mogu.train.data import Record, load_records
from mogu.train.pipeline import bundle_train_config
from mogu.train.router_init import collect_router_inputs, router_features
from mogu.train.stages import generate_all

ASK = "\n\nBefore you answer: is this request safe to help with?"
WRAPPERS: dict[str, Callable[[str], ChatInput]] = {
    "plain": lambda s: s,
    "system": lambda s: [{"role": "system", "content": SELF_REMINDER_SYSTEM}, {"role": "user", "content": s}],
    "reminder": lambda s: [{"role": "system", "content": SELF_REMINDER_SYSTEM},
                           {"role": "user", "content": s + SELF_REMINDER_SUFFIX}],
    "ask": lambda s: s + ASK,
}
SCORED = ("plain", "framed", "attack")
Suites = dict[str, tuple[torch.Tensor, torch.Tensor]]  # suite -> (features (N, d), benign (N,) bool)


def read(model: MoGUModel, suites: dict[str, list[Record]], wrapper: str, offset: int, draft: int = 0) -> Suites:
    """Each suite's routed-layer inputs at ``offset`` tokens before the last prompt token, or (``draft`` > 0)
    their mean over the last prompt token and the first ``draft`` - 1 tokens of the base model's greedy
    answer; in record order."""
    tok, layers = model.tokenizer, tuple(model.config.layers)
    positions = max(draft, 1)
    result = {}
    for name, records in suites.items():
        chats = [WRAPPERS[wrapper](r.instruction) for r in records]
        prompts = [tok(format_chat(tok, chat), add_special_tokens=False)["input_ids"] for chat in chats]
        if draft:
            answers = generate_all(model, chats, DecodingConfig(mode="base", max_new_tokens=draft), batch_size=32)
            # an answer that ended early is continued with end-of-sequence tokens, which the model reads as such
            items = [(Pair(p, (a.token_ids + [tok.eos_token_id] * draft)[:draft]), r.benign)
                     for p, a, r in zip(prompts, answers, records)]
        else:  # the token read is the last of a shortened prompt; what follows it is never looked at
            items = [(Pair(p[: len(p) - offset], p[len(p) - offset :] or [p[-1]]), r.benign)
                     for p, r in zip(prompts, records)]
        order = sorted(range(len(items)), key=lambda i: len(items[i][0].prompt))
        features, benign = collect_router_inputs(model, [items[i] for i in order], positions=positions, mode="base")
        pooled = {layer: x.reshape(len(order), positions, -1).mean(1) for layer, x in features.items()}
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        result[name] = router_features(pooled, layers)[back], benign[::positions][back].bool()
    return result


def scored(score: Callable[[torch.Tensor], torch.Tensor], data: Suites) -> dict:
    result: dict = {name: refused(score(data[name][0]), data[name][1]) for name in SCORED}
    result["mean2"] = round((result["plain"]["balanced"] + result["framed"]["balanced"]) / 2, 4)
    result["mean3"] = round(sum(result[name]["balanced"] for name in SCORED) / 3, 4)
    return result


def probe(data: Suites, l2: float, steps: int) -> dict:
    w, b = fit_logistic(data["train"][0], data["train"][1].float(), l2, steps)
    return scored(lambda x: x @ w + b, data)


def mlp(data: Suites) -> dict:
    """A two-layer classifier under the probe's class-balanced loss."""
    torch.manual_seed(0)
    x, y = data["train"][0], data["train"][1].float()
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    weight = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(20):
        for batch in torch.randperm(len(y)).split(32):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[batch]).squeeze(-1), y[batch],
                                                                        weight=weight[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return scored(lambda features: net(features).squeeze(-1), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--wrappers", nargs="+", choices=sorted(WRAPPERS), default=list(WRAPPERS))
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 1, 2, 3, 7])
    parser.add_argument("--drafts", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--l2", type=float, nargs="+", default=[])
    parser.add_argument("--mlp", action="store_true")
    parser.add_argument("--attack", type=Path, default=Path(__file__).parent / "data" / "attack_framings.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = bundle_train_config(args.bundle)
    records = load_records(args.bundle / "data.jsonl")
    val = [r for r in records if r.split == "val"]
    suites = {"train": [r for r in framed_copies(records, config.framing) if r.split == "train"], "plain": val,
              "framed": framed_copies(val, FramingConfig(train_fraction=0.0, val_fraction=1.0))[len(val) :],
              "attack": attacked(val, json.loads(args.attack.read_text(encoding="utf-8")))}
    routed = json.loads((args.bundle / "layers.json").read_text(encoding="utf-8"))["selected"]
    model = MoGUModel.from_base(config.base, target_module=config.target_module, layers=routed,
                                expert=config.expert, router=config.router, dtype=config.dtype)
    stage = config.router_stage
    plain = "plain" in args.wrappers
    readings = ([(w, 0, 0) for w in args.wrappers] + [("plain", k, 0) for k in args.offsets if k and plain]
                + [("plain", 0, k) for k in args.drafts if plain])
    result: dict = {"bundle": str(args.bundle), "reads": routed, "n": {k: len(v) for k, v in suites.items()},
                    "probe_l2": stage.probe_l2, "readings": {}}
    for wrapper, offset, draft in tqdm(readings, desc="readings"):
        data = read(model, suites, wrapper, offset, draft)
        result["readings"][f"draft{draft}" if draft else f"{wrapper}@{offset}"] = probe(data, stage.probe_l2, stage.probe_steps)
        if (wrapper, offset, draft) == ("plain", 0, 0):
            result["l2"] = {str(l2): probe(data, l2, stage.probe_steps) for l2 in args.l2}
            if args.mlp:
                result["mlp"] = mlp(data)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
