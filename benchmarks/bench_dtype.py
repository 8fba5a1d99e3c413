"""float32 against bfloat16 weights on this machine, side by side. Prints JSON.

For each dtype, on the embedded default model with the six layers the default
pipeline routes: greedy generation by the base model (``--prompts`` seed
instructions, 12 new tokens, batches of 32: the data step's work), and one
router-stage optimizer step (CE + gate loss, batch 16: the training stages'
work). Also reports what ``dtype="auto"`` resolves to here and whether the
greedy answers of both dtypes agree.

    python benchmarks/bench_dtype.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench_train import router_step, timed_steps

LAYERS = [14, 15, 16, 17, 21, 27]


def measure(dtype: torch.dtype, prompts: list[str], batch_size: int, repeats: int) -> tuple[dict, list[str]]:
    from mogu.model.config import DecodingConfig
    from mogu.model import MoGUModel
    from mogu.train.stages import generate_all

    model = MoGUModel.from_base("default", dtype=dtype, layers=LAYERS)
    decoding = DecodingConfig(max_new_tokens=12, mode="base")
    generate_all(model, prompts[:8], decoding, batch_size)  # warm-up
    start = time.perf_counter()
    answers = generate_all(model, prompts, decoding, batch_size)
    generation = time.perf_counter() - start
    step, _ = router_step(model, 16)
    result = {"generate_seconds": generation, "router_step_seconds": timed_steps(step, repeats)}
    return result, [a.text for a in answers]


def main() -> None:
    from mogu.model.loading import resolve_dtype
    from mogu.train.data import load_records

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = [r.instruction for r in load_records() if r.benign][: args.prompts]
    results: dict = {"auto_resolves_to": str(resolve_dtype("auto")).removeprefix("torch."),
                     "threads": torch.get_num_threads(), "prompts": len(prompts)}
    texts = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        results[name], texts[name] = measure(dtype, prompts, args.batch_size, args.repeats)
    for key in ("generate_seconds", "router_step_seconds"):
        results[f"speedup_{key.removesuffix('_seconds')}"] = results["float32"][key] / results["bfloat16"][key]
    results["same_greedy_answer"] = sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"])) / len(prompts)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
