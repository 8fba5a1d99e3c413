"""Bagged routers: the router stage run ``router_stage.members`` times from one warm start, weights averaged.

One router stage's validation figures move with its seed about as much as
with any setting tried (docs/TRAINING.md): a few dozen steps on a seeded
subset of the training split decide where each router ends up. So the stage
runs several times from the same warm start, each member on its own subset
and batch order (seeds ``seed``, ``seed + 1``, ...), each selecting its own
checkpoint on the validation split as a single stage does, and the members'
routers are averaged. Routers of the ``linear`` shape are one linear scorer
each, so the average of their weights is the average of their logits.
The average is validated once more: that validation is the stage's record,
and calibration starts from it.

Every member keeps its own folder (``router/member-K/``) with its checkpoints
and, once done, its selected routers, so an interrupted run resumes inside
the member it was in and does not repeat finished ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from mogu.config import write_json_atomic
from mogu.model import MoGUModel
from mogu.train.config import TrainConfig
from mogu.train.data import Record
from mogu.train.loop import TrainLog, restore_random_stream, run_stage
from mogu.train.stages import router_stage

log = logging.getLogger(__name__)

MEMBER_ROUTER = "router.safetensors"  # a finished member's selected routers
MEMBER_DONE = "selection.json"  # written (atomically) after them: a half-written router file is never read


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of router state dicts with the same keys."""
    return {key: torch.stack([state[key] for state in states]).mean(0) for key in states[0]}


def run_router_members(
    model: MoGUModel,
    records: list[Record],
    config: TrainConfig,
    accelerator: Accelerator,
    stage_dir: Path,
    train_log: TrainLog,
    log_truncated: Callable[[str, int], None],
) -> dict:
    """Train the routers (the trainable set is already unfrozen), leave them in ``model`` and return the
    stage's selection record. With one member this is the plain router stage in ``stage_dir``."""
    members = config.router_stage.members
    if members == 1:
        return run_stage(router_stage(model, records, config, log_truncated), model, accelerator, stage_dir,
                         train_log, config.seed)
    base = router_stage(model, records, config, log_truncated)  # tokenised once; every member takes a copy
    fresh = model.router_state_dict()  # what the warm start fits under (a fresh router weighs 0.5 / 0.5)
    start: dict[str, torch.Tensor] = {}  # the warm start, once fitted: every later member starts from it

    def initialise() -> None:
        if start:
            model.set_router_state(start)
            return
        model.set_router_state(fresh)
        if base.initialise is not None:
            base.initialise()
        start.update(model.router_state_dict())

    states, results = [], []
    for k in range(members):
        member_dir = stage_dir / f"member-{k}"
        if (member_dir / MEMBER_DONE).is_file():
            states.append(load_file(str(member_dir / MEMBER_ROUTER)))
            results.append(json.loads((member_dir / MEMBER_DONE).read_text(encoding="utf-8")))
            restore_random_stream(member_dir, accelerator)  # later members draw as in one uninterrupted run
            log.info("router member %d of %d already done; loaded its routers", k + 1, members)
            continue
        # run_stage gives the copy its own training subset (seed + k); the base's items stay whole
        stage = replace(base, name=f"router.{k}", initialise=initialise)
        result = run_stage(stage, model, accelerator, member_dir, train_log, config.seed + k)
        states.append(model.router_state_dict())
        results.append({"member": k, "selected_step": result["selected_step"], "score": result["score"]})
        if accelerator.is_main_process:
            save_file(states[-1], str(member_dir / MEMBER_ROUTER))
            write_json_atomic(member_dir / MEMBER_DONE, results[-1])  # only now is the member done
        accelerator.wait_for_everyone()
    model.set_router_state(average_states(states))
    score, metrics = base.validate()
    train_log.write(stage="router", step="average", validation=metrics, score=score)
    log.info("router: the average of %d members validates %s", members,
             ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return {"selected_step": "average", "score": list(score), "members": results,
            "validations": [{"step": "average", "score": list(score), **metrics}]}
