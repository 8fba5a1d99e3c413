"""Generation cost of MoGU against the plain model and the released two-copy procedure.

Each variant runs in its own child process (so peak memory is its own), on the
same prompts, greedy, exactly ``--new-tokens`` tokens (EOS suppressed so every
variant does the same work), at each batch size:

  plain           a stock transformers model: ``model.generate``
  mogu            MoGUModel.generate: routed tokens with a KV cache on one copy of the weights, then the
                  base model reads the last prompt token and the routed tokens (the whole prompt
                  again where routing read it) and continues
  released        the released procedure: a second full model copy, the routed tokens
                  decoded without a KV cache (whole sequence re-run per token), then the
                  base copy re-reads everything and continues

Prints JSON.

    python benchmarks/bench_generate.py --target BUNDLE
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

PROMPTS = [
    "Give me three tips for sleeping better.",
    "Write a short poem about autumn leaves.",
    "How do I reverse a list in Python?",
    "Explain what photosynthesis is to a ten-year-old.",
    "What should I pack for a weekend hiking trip?",
    "Draft a polite email asking my manager for a day off.",
    "What is the difference between a virus and a bacterium?",
    "Suggest a simple dinner recipe with chickpeas.",
]


def load(target: str):
    """A bundle (its routers folded to the linear shape on load), or fresh linear routers on a base model."""
    from mogu.model.config import RouterConfig
    from mogu.model import MoGUModel
    from mogu.model.bundle_files import is_bundle

    return MoGUModel.from_pretrained(target) if is_bundle(target) else MoGUModel.from_base(target, router=RouterConfig(shape="linear"))


def run_variant(variant: str, target: str, batch: int, new_tokens: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mogu.model.config import DecodingConfig
    from mogu.model.bundle_files import is_bundle, read_config
    from mogu.model.chat import format_chat
    from mogu.model.loading import resolve_model_path

    torch.manual_seed(0)
    prompts = (PROMPTS * ((batch + len(PROMPTS) - 1) // len(PROMPTS)))[:batch]
    if variant == "plain":  # the stock model alone, so that its peak memory is its own
        path = resolve_model_path(read_config(Path(target)).base.source if is_bundle(target) else target)
        plain = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        texts = [format_chat(tokenizer, p) for p in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

        def once():
            with torch.no_grad():
                plain.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=pad)
    else:
        mogu = load(target)
    if variant == "mogu":
        decoding = DecodingConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)

        def once():
            mogu.generate(prompts, decoding)
    elif variant == "released":
        once = released_procedure(mogu, prompts, new_tokens)
    once()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def released_procedure(mogu, prompts: list[str], new_tokens: int):
    """Two full copies; m routed tokens without a cache; then the base copy re-reads everything."""
    from mogu.model.generation import encode_prompts

    mixed = mogu
    base = copy.deepcopy(mogu)
    base.set_mode("base")
    mixed.set_mode("mogu")
    m = mogu.config.routed_tokens
    enc = encode_prompts(mogu, prompts, new_tokens)

    def once():
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            for _ in range(m):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = mixed(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            base.base_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens - m,
                                     min_new_tokens=new_tokens - m, do_sample=False,
                                     pad_token_id=mogu.tokenizer.pad_token_id)

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="default", help="bundle folder or base model")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.target, args.batch, args.new_tokens, args.repeats)))
        return
    results: dict = {"target": args.target, "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
                     "batches": {}}
    for batch in args.batch_sizes:
        row = {}
        for variant in ("plain", "mogu", "released"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--batch", str(batch),
                                  "--target", args.target, "--new-tokens", str(args.new_tokens),
                                  "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
            row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        plain = row["plain"]
        row["mogu"]["time_ratio_vs_plain"] = row["mogu"]["seconds"] / plain["seconds"]
        row["mogu"]["memory_ratio_vs_plain"] = row["mogu"]["peak_rss_mb"] / plain["peak_rss_mb"]
        row["mogu"]["speedup_vs_released"] = row["released"]["seconds"] / row["mogu"]["seconds"]
        row["released"]["memory_ratio_vs_plain"] = row["released"]["peak_rss_mb"] / plain["peak_rss_mb"]
        results["batches"][str(batch)] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
