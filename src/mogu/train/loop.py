"""One resumable training loop shared by the three stages.

The loop runs unchanged on CPU and under ``accelerate launch`` on several GPUs:
each process takes its share of every batch, gradients of the (small) trainable
set are averaged across processes, and forward passes run under the
accelerator's autocast (bf16 where the hardware has it).

Every ``eval_every`` optimizer steps the stage is validated, the best
parameters so far are kept (selection is automatic, on the validation split),
and a checkpoint is written atomically: trainable parameters, optimizer
state and the random stream's state as safetensors, progress as JSON. A
rerun resumes from it and skips the batches already seen, so killing the
process loses at most ``eval_every`` steps.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from mogu.model import MoGUModel
from mogu.train.config import StageConfig
from mogu.train.rng import RNG_FILE, gather_rng_states, restore_rng_state

log = logging.getLogger(__name__)

Batch = dict[str, Any]
LossFn = Callable[[list[Any]], tuple[torch.Tensor, dict[str, float], int]]  # items -> (loss, metrics, tokens)
Validate = Callable[[], tuple[tuple[float, ...] | None, dict[str, Any]]]  # -> (score or None if ineligible, metrics)


@dataclass
class Stage:
    name: str
    config: StageConfig
    items: list[Any]
    loss: LossFn
    validate: Validate
    initialise: Callable[[], None] | None = None  # runs once on a fresh start, never when resuming


class TrainLog:
    """Appends one JSON object per event to ``train_log.jsonl`` (main process only)."""

    def __init__(self, path: Path, accelerator: Accelerator) -> None:
        self.path = path
        self.main = accelerator.is_main_process

    def write(self, **event: Any) -> None:
        if self.main:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")


def _named(model: MoGUModel, params: list[torch.nn.Parameter]) -> dict[str, torch.nn.Parameter]:
    wanted = {id(p) for p in params}
    return {n: p for n, p in model.named_parameters() if id(p) in wanted}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    out = {}
    for index, entry in state.items():
        for key, value in entry.items():
            out[f"{names[index]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optimizer(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    index = {name: i for i, name in enumerate(names)}
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, field = key.rpartition("::")
        restored.setdefault(index[name], {})[field] = value
    state["state"] = restored
    optimizer.load_state_dict(state)


def _write_checkpoint(directory: Path, params: dict[str, torch.nn.Parameter], optimizer, progress: dict,
                      rng: dict[str, torch.Tensor]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=directory.parent))
    _save_tensors(tmp / RNG_FILE, rng)
    _save_tensors(tmp / "params.safetensors", dict(params))
    _save_tensors(tmp / "optimizer.safetensors", _optimizer_tensors(optimizer, list(params)))
    (tmp / "progress.json").write_text(json.dumps(progress, indent=1), encoding="utf-8")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def make_accelerator() -> Accelerator:
    """The accelerator every training run uses: bf16 autocast where the hardware has it, else full precision."""
    return Accelerator(mixed_precision="bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no")


def restore_random_stream(workdir: Path, accelerator: Accelerator) -> None:
    """The random stream as the stage's last checkpoint left it: where a resumed stage goes on from, and,
    for a finished stage (checkpointed at its last step), where the next stage starts."""
    restore_rng_state(workdir / "checkpoint" / RNG_FILE, accelerator)


def run_stage(stage: Stage, model: MoGUModel, accelerator: Accelerator, workdir: Path, train_log: TrainLog, seed: int) -> dict:
    """Train ``stage`` (its trainable set is already unfrozen), leave the selected parameters in
    ``model`` and return the selection record. Resumes from ``workdir/checkpoint``."""
    cfg = stage.config
    if cfg.max_examples is not None and cfg.max_examples < len(stage.items):
        keep = torch.randperm(len(stage.items), generator=torch.Generator().manual_seed(seed)).tolist()[: cfg.max_examples]
        log.info("%s: training on a seeded subset of %d of %d examples (max_examples)", stage.name, len(keep), len(stage.items))
        train_log.write(stage=stage.name, subset=len(keep), available=len(stage.items))
        stage.items = [stage.items[i] for i in sorted(keep)]
    params = _named(model, [p for p in model.parameters() if p.requires_grad])
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint, best_path = workdir / "checkpoint", workdir / "best.safetensors"
    steps_per_epoch = math.ceil(len(stage.items) / (cfg.batch_size * cfg.grad_accum))
    total_steps = steps_per_epoch * cfg.epochs
    progress = {"step": 0, "best_score": None, "best_step": None, "validations": []}
    if (checkpoint / "progress.json").is_file():
        progress = json.loads((checkpoint / "progress.json").read_text(encoding="utf-8"))
        with torch.no_grad():
            for name, value in load_file(str(checkpoint / "params.safetensors")).items():
                params[name].copy_(value)
        _load_optimizer(optimizer, list(params), load_file(str(checkpoint / "optimizer.safetensors")))
        restore_random_stream(workdir, accelerator)
        log.info("%s: resuming at step %d of %d", stage.name, progress["step"], total_steps)
    else:
        if stage.initialise is not None:
            stage.initialise()

    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(total=total_steps, initial=progress["step"], desc=f"stage {stage.name}", unit="step",
               disable=not accelerator.is_main_process)
    started, tokens_seen = time.perf_counter(), 0
    while progress["step"] < total_steps:
        epoch, step_in_epoch = divmod(progress["step"], steps_per_epoch)
        order = torch.randperm(len(stage.items), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        per_step = cfg.batch_size * cfg.grad_accum
        chunk = order[step_in_epoch * per_step : (step_in_epoch + 1) * per_step]
        lr = cfg.lr * min(1.0, (progress["step"] + 1) / max(1, cfg.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        metrics_sum: dict[str, float] = {}
        micro = [chunk[i : i + cfg.batch_size] for i in range(0, len(chunk), cfg.batch_size)]
        for indices in micro:
            mine = [stage.items[i] for i in indices[rank::world]]
            if not mine:
                continue
            with accelerator.autocast():
                loss, metrics, tokens = stage.loss(mine)
            accelerator.backward(loss * len(mine) / len(chunk) * world)
            tokens_seen += tokens
            for k, v in metrics.items():
                metrics_sum[k] = metrics_sum.get(k, 0.0) + v * len(mine) / len(chunk)
        if world > 1:
            for p in params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad = accelerator.reduce(p.grad, reduction="mean")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        progress["step"] += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in metrics_sum.items()})
        elapsed = time.perf_counter() - started
        train_log.write(stage=stage.name, step=progress["step"], epoch=epoch, lr=lr, **metrics_sum,
                        tokens_per_s=round(tokens_seen / max(elapsed, 1e-9), 1))
        if progress["step"] % cfg.eval_every == 0 or progress["step"] % steps_per_epoch == 0 or progress["step"] == total_steps:
            _validate(stage, model, progress, best_path, params, train_log, accelerator)
            rng = gather_rng_states(accelerator)
            if accelerator.is_main_process:
                _write_checkpoint(checkpoint, params, optimizer, progress, rng)
            accelerator.wait_for_everyone()
    bar.close()
    if best_path.is_file():
        with torch.no_grad():
            for name, value in load_file(str(best_path)).items():
                params[name].copy_(value)
    log.info("%s: selected step %s (score %s)", stage.name, progress["best_step"], progress["best_score"])
    return {"selected_step": progress["best_step"], "score": progress["best_score"], "validations": progress["validations"]}


def _validate(stage, model, progress, best_path, params, train_log, accelerator) -> None:
    score, metrics = stage.validate()
    progress["validations"].append({"step": progress["step"], "score": score, **metrics})
    train_log.write(stage=stage.name, step=progress["step"], validation=metrics, score=score)
    log.info("%s step %d validation: %s", stage.name, progress["step"],
             ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    best = progress["best_score"]
    if score is not None and (best is None or tuple(score) > tuple(best)):
        progress["best_score"], progress["best_step"] = list(score), progress["step"]
        if accelerator.is_main_process:
            tmp = best_path.with_name(".best.tmp")
            _save_tensors(tmp, dict(params))
            tmp.replace(best_path)
