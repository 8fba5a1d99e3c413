"""``sft``: a LoRA fine-tuned with plain CE on the seed train split (harmful -> a refusal, benign and borderline
-> the base model's answer), trained once by the experts' training loop and cached; it answers every token (the
prompt is read as the experts read it: by the base model under ``router.prompt`` "base").

The LoRA sits where MoGU's experts sit (same modules, r and alpha), so the baseline has the capacity of one MoGU
expert; it is swapped into the model's glad expert slot only while it is used.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from safetensors.torch import load_file

from mogu.eval.defenses.base import (
    SLOT,
    Defense,
    DefenseError,
    Options,
    borrowed_expert,
    cache_matches,
    own_folder,
    restored_expert,
    seeded_subset,
    train_and_val,
    validated,
)
from mogu.eval.suites import Prompt
from mogu.io.files import write_json_atomic
from mogu.io.provenance import provenance
from mogu.model import MoGUModel
from mogu.model.bundle_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from mogu.model.config import DecodingConfig, StrictModel
from mogu.train.augment import framed_copies
from mogu.train.config import FramingConfig, StageConfig
from mogu.train.data import Record, build_dataset, load_records
from mogu.train.loop import TrainLog, make_accelerator, run_stage
from mogu.train.stages import sft_stage

log = logging.getLogger(__name__)


class SFTConfig(StrictModel):
    """The SFT baseline: a LoRA of the bundle's expert shape, plain CE on (instruction, target response)."""

    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    eval_every: int = Field(20, ge=1)
    max_examples: int | None = Field(400, ge=1, description="seeded subset of the train split; None: all")
    val_examples: int = Field(64, ge=1, description="seeded subset of the val split for checkpoint selection")
    max_length: int = Field(192, ge=16)
    max_response_tokens: int = Field(20, ge=4)
    seed: int = 0
    data: Path | None = Field(None, description="instructions JSONL (docs/data.md); None: the packaged instruction set")
    framing: FramingConfig = Field(
        FramingConfig(), description="framed copies added to the sampled instructions, as mogu train adds them "
        "(mogu.train.augment); the evaluation passes a bundle's own setting"
    )


class SFTDefense(Defense):
    """A LoRA fine-tuned to refuse harmful and answer benign instructions, trained once and cached.

    Cache folder: ``adapter/`` (an ordinary PEFT adapter), ``sft.json``
    (config, base fingerprint, selection), ``data.jsonl`` (responses made
    for the training instructions) and ``train_log.jsonl``. A folder that is
    itself a PEFT LoRA adapter (``adapter_config.json``, same shape as the
    model's experts) is used as it is.
    """

    name = "sft"

    def __init__(self, model: MoGUModel, cache_dir: str | Path, **options: Any) -> None:
        super().__init__(model)
        self.cache_dir = Path(cache_dir)
        self.config = validated(SFTConfig, self.name, options)
        self.state: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_options(cls, model: MoGUModel, options: Options, cache_dir: Path) -> SFTDefense:
        folder, own = own_folder(cls.name, options, cache_dir)
        return cls(model, folder, **own)

    def params(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(mode="json"), "expert": self.model.config.expert.model_dump(mode="json")}

    def _wanted(self) -> dict[str, Any]:
        # the prompt setting says which positions the LoRA was trained on (``router.prompt``)
        return {**self.params(), "base_fingerprint": self.model.config.base.fingerprint,
                "target_modules": list(self.model.config.target_modules), "prompt": self.model.config.router.prompt}

    def info(self) -> dict[str, Any]:
        meta = self.cache_dir / "sft.json"
        if not meta.is_file():
            return {}
        saved = json.loads(meta.read_text(encoding="utf-8"))
        return {"adapter": str(self.cache_dir / "adapter"), **{k: saved.get(k) for k in ("selected_step", "val_ce", "train_examples", "seconds")}}

    def prepare(self) -> None:
        if self.state is not None:
            return
        if cache_matches(self.cache_dir / "sft.json", self._wanted()):
            self.state = load_file(str(self.cache_dir / "adapter" / ADAPTER_WEIGHTS))
            log.info("sft: loaded the cached adapter from %s", self.cache_dir)
            return
        if (self.cache_dir / ADAPTER_CONFIG).is_file():  # a ready PEFT LoRA folder, trained elsewhere
            with restored_expert(self.model):
                self.model.load_expert(SLOT, self.cache_dir)  # checks r, alpha, modules and shapes
                self.state = self.model.expert_state_dict(SLOT)
            log.info("sft: loaded the LoRA adapter %s", self.cache_dir)
            return
        if (self.cache_dir / "adapter").exists():
            raise DefenseError(f"{self.cache_dir / 'adapter'} exists without a matching sft.json; delete it or choose another folder")
        self.state = self._train()

    def _records(self) -> tuple[list[Record], list[Record]]:
        """The seeded train and val subsets with their responses (made once, kept in ``data.jsonl``) and framed
        copies."""
        cfg = self.config
        train, val = train_and_val(self.name, load_records(cfg.data))
        rng = random.Random(cfg.seed)
        train, val = seeded_subset(train, cfg.max_examples, rng), seeded_subset(val, cfg.val_examples, rng)
        built = build_dataset(self.model, train + val, self.cache_dir / "data.jsonl", cfg.max_response_tokens, batch_size=16)
        return train_and_val(self.name, framed_copies(built, cfg.framing))

    def _train(self) -> dict[str, torch.Tensor]:
        cfg, model = self.config, self.model
        started = time.perf_counter()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        pending = self.cache_dir / "sft.pending.json"
        if pending.is_file() and json.loads(pending.read_text(encoding="utf-8")) != self._wanted():
            log.info("sft: discarding an interrupted run with other settings in %s", self.cache_dir)
            shutil.rmtree(self.cache_dir / "work", ignore_errors=True)
            (self.cache_dir / "data.jsonl").unlink(missing_ok=True)
        write_json_atomic(pending, self._wanted())
        train, val = self._records()
        stage_cfg = StageConfig(**cfg.model_dump(include=set(StageConfig.model_fields)))
        stage = sft_stage(model, train, val, stage_cfg, cfg.max_length, cfg.max_response_tokens, SLOT)
        examples = len(stage.items)  # before run_stage takes its max_examples subset
        accelerator = make_accelerator()
        work = self.cache_dir / "work"
        with restored_expert(model):
            torch.manual_seed(cfg.seed)  # the fresh LoRA's draw
            model.set_trainable(SLOT)
            try:
                result = run_stage(stage, model, accelerator, work, TrainLog(self.cache_dir / "train_log.jsonl", accelerator), cfg.seed)
            finally:
                model.set_trainable(None)
            model.save_expert(SLOT, self.cache_dir / "adapter")
            state = model.expert_state_dict(SLOT)
        best = max((v for v in result["validations"] if v.get("score") is not None), key=lambda v: v["score"], default={})
        write_json_atomic(self.cache_dir / "sft.json", {
            **self._wanted(), "selected_step": result["selected_step"], "val_ce": best.get("val_ce"),
            "train_examples": examples, "seconds": round(time.perf_counter() - started, 1), "provenance": provenance(),
        })
        shutil.rmtree(work, ignore_errors=True)
        pending.unlink(missing_ok=True)
        log.info("sft: trained on %d examples, selected step %s, saved to %s", examples, result["selected_step"], self.cache_dir)
        return state

    def generate(self, prompts: Sequence[Prompt], decoding: DecodingConfig) -> list[str]:
        if not prompts:
            return []
        self.prepare()
        assert self.state is not None
        # The LoRA must answer every token: route them all through the borrowed slot.
        update = {"mode": SLOT, "routed_tokens": decoding.max_new_tokens}
        with borrowed_expert(self.model, self.state):
            return [r.text for r in self.model.generate([p.text for p in prompts], decoding.model_copy(update=update))]
