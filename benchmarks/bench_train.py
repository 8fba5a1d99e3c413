"""Training cost on the embedded default model. Prints JSON.

``throughput``: tokens/s of one MoGU router-stage optimizer step (CE + gate
loss; the paper's router shape, the linear one reading its own layer, and the
default, linear reading the routed layers below too), every layer routed,
against one plain PEFT LoRA step (r 8 on the same projections, CE) on the
same batch, measured side by side; and one glad-expert step on whole sequences (``collate``)
against the same step with the prompt but its last token read once by the base model without
gradients (``training_batch``, what the stages run). ``--layers`` routes (and puts the LoRA in)
those decoder layers only, e.g. the six the default pipeline selects. Both compute the
CE with ``mogu.train.batches.response_ce`` (logits at response positions only; the MoGU
steps read each prompt but its last token once without gradients, as the stages do, the PEFT step
runs whole sequences, as stock PEFT training does), with
base weights of the same ``--dtype`` (default ``auto``, as ``mogu train``: bfloat16 on a
CPU with AMX or a GPU that supports it, else float32; adapters and routers in float32).

``pipeline``: the whole default ``mogu train`` into a fresh folder: seconds
per stage and the base vs MoGU refusal rates on the seed test split.

    python benchmarks/bench_train.py throughput
    python benchmarks/bench_train.py throughput --layers 14 15 16 17 21 27
    python benchmarks/bench_train.py pipeline --out /tmp/mogu-bench-bundle
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import torch

from mogu.model.config import DtypeName

if TYPE_CHECKING:
    from mogu.model import MoGUModel
    from mogu.train.batches import Pair


def timed_steps(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def router_step(model: MoGUModel, batch_size: int) -> tuple[Callable[[], None], list[Pair]]:
    """One router-stage optimizer step (CE + gate loss, AdamW) of ``model`` on the first ``batch_size`` seed
    training instructions, and that batch's (prompt, response) pairs. Puts the model in training mode."""
    from mogu.train.config import TrainConfig
    from mogu.train.data import affirmative_opening, load_records, refusal_for
    from mogu.train.stages import router_stage

    records = [r for r in load_records() if r.split == "train"][: batch_size * 2]
    for r in records:
        r.compliant, r.refusal = affirmative_opening(r), refusal_for(r)
    params = model.set_trainable("router")
    stage = router_stage(model, records, TrainConfig(), lambda *_: None)
    batch = stage.items[:batch_size]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        loss, _, _ = stage.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return step, [p for p, _ in batch]


def expert_steps(model: MoGUModel, pairs: list[Pair], repeats: int) -> dict:
    """Seconds per glad-expert optimizer step on ``pairs``: whole sequences against the prompt read once."""
    from mogu.train.batches import collate, response_ce, training_batch

    params = model.set_trainable("glad")
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    batches = {"whole": lambda: {k: v.to(model.device) for k, v in collate(pairs, 0).items()},
               "prompt_read_once": lambda: training_batch(model, pairs)}
    results = {}
    for name, make in batches.items():
        def step() -> None:
            batch = make()
            with model.mode("glad", labels=batch["labels"]):
                response_ce(model, batch).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results[f"mogu_expert_{name}"] = {"seconds_per_step": timed_steps(step, repeats)}
    results["ratio_expert_prompt_read_once_vs_whole"] = (
        results["mogu_expert_whole"]["seconds_per_step"] / results["mogu_expert_prompt_read_once"]["seconds_per_step"])
    return results


def throughput(batch_size: int, repeats: int, layers: list[int] | None = None, dtype: DtypeName = "auto") -> dict:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mogu.model.config import RouterConfig
    from mogu.model import MoGUModel
    from mogu.model.loading import resolve_dtype, resolve_model_path
    from mogu.train.batches import collate, response_ce

    weights = resolve_dtype(dtype)
    results: dict = {"batch_size": batch_size, "threads": torch.get_num_threads(), "layers": layers or "all",
                     "dtype": str(weights).removeprefix("torch.")}
    routers = {"paper": RouterConfig(shape="paper", reads="own"), "linear": RouterConfig(reads="own"),
               "linear_stack": RouterConfig(reads="stack")}
    for name, router in routers.items():
        model = MoGUModel.from_base("default", router=router, layers=layers, dtype=weights)
        step, pairs = router_step(model, batch_size)
        results[f"mogu_router_{name}"] = {"seconds_per_step": timed_steps(step, repeats)}
        peft_config = model.peft_config()
        del model, step
    inputs = collate(pairs, 0)  # the batch every step above ran on
    tokens = int(inputs["attention_mask"].sum())
    results.update(expert_steps(MoGUModel.from_base("default", layers=layers, dtype=weights), pairs, repeats))

    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path("default"), dtype=weights)
    peft_config.target_modules = sorted({t.rsplit(".", 1)[-1] for t in peft_config.target_modules})  # e.g. o_proj
    peft_config.layers_to_transform = layers
    lora = get_peft_model(plain, peft_config)
    lora.train()
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def lora_step():
        response_ce(lora, inputs).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results["peft_lora"] = {"seconds_per_step": timed_steps(lora_step, repeats),
                            "lora_parameters": sum(p.numel() for p in lora.parameters() if p.requires_grad)}
    for entry in [f"mogu_router_{name}" for name in routers] + ["peft_lora"]:
        results[entry]["tokens_per_s"] = tokens / results[entry]["seconds_per_step"]
    for name in routers:
        results[f"ratio_router_{name}_vs_lora"] = (
            results[f"mogu_router_{name}"]["tokens_per_s"] / results["peft_lora"]["tokens_per_s"]
        )
    results["tokens_per_batch"] = tokens
    return results


def pipeline(out: Path) -> dict:
    from mogu.train.config import TrainConfig
    from mogu.train.pipeline import train

    for path in (out, out.with_name(out.name + ".work")):
        shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    bundle = train(TrainConfig(), out)
    total = time.perf_counter() - start
    evaluation = json.loads((bundle / "evaluation.json").read_text())
    return {"total_seconds": total, "seconds_per_stage": evaluation["timings_seconds"],
            "refusal_rate": evaluation["refusal_rate"], "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "pipeline"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mogu-bench-bundle"))
    parser.add_argument("--layers", type=int, nargs="+", help="throughput: route only these decoder layers")
    parser.add_argument("--dtype", choices=get_args(DtypeName), default="auto", help="throughput: base weights")
    args = parser.parse_args()
    result = throughput(args.batch_size, args.repeats, args.layers, args.dtype) if args.what == "throughput" else pipeline(args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
