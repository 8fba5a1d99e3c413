"""Typed training configuration (``mogu train --config FILE`` reads JSON or TOML into it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from mogu.config import DtypeName, ExpertConfig, RouterConfig, StrictModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib joined the standard library in 3.11; tomli is the same parser
    import tomli as tomllib


class SynthesisConfig(StrictModel):
    """How responses are made for instructions that come without them."""

    max_response_tokens: int = Field(
        12, ge=4, description="only the opening of a response matters: MoGU routes the first routed_tokens"
    )
    batch_size: int = Field(32, ge=1, description="batch size of the base model's own greedy answers")


class StageConfig(StrictModel):
    """Optimisation settings shared by the three stages."""

    lr: float = Field(gt=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    eval_every: int = Field(10, ge=1, description="optimizer steps between validation checks (and checkpoints)")
    max_examples: int | None = Field(
        None, ge=1, description="train on a seeded random subset of this size (logged); None: all training examples"
    )
    validate_at_start: bool = Field(
        True, description="validate (and so consider for selection) the starting point too, before any step"
    )


class ExpertStageConfig(StageConfig):
    """Glad / unwilling expert: loss CE(wanted) / clamp(CE(unwanted), floor, ceiling).

    The floor guards against a vanishing denominator; the ceiling stops pushing
    the unwanted response away once it is already unlikely, which otherwise
    grows without limit and costs fluency.
    """

    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(1, ge=1)
    max_examples: int | None = Field(192, ge=1)
    ratio_floor: float = Field(0.1, gt=0)
    ratio_ceiling: float = Field(5.0, gt=0)
    val_tokens: int = Field(10, ge=1, description="tokens generated per validation instruction to judge behaviour")
    max_fluency_increase: float = Field(
        1.0, ge=0, description="a checkpoint whose fluency CE (wanted responses to the other label's validation "
        "instructions) rose more than this (nats) above the base model's is not selected"
    )


class RouterStageConfig(StageConfig):
    """Routers only: CE(response under the mixed model) + alpha * gate loss."""

    lr: float = Field(3e-3, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    max_examples: int | None = Field(384, ge=1)
    eval_every: int = Field(
        24, ge=1, description="the default validates the last of its 24 steps only: a second validation costs "
        "~47 s of the 15-minute CPU budget, and step 24 beat step 12 in 2 of 3 runs with framed copies "
        "(docs/TRAINING.md); checkpoints follow validation, so an interrupted router stage repeats its steps"
    )
    validate_at_start: bool = Field(
        False, description="the warm-started routers before any step; measured, they were never the best (0.68 "
        "balanced on the seed validation split, 0.91 after 12 steps)"
    )
    alpha: float = Field(2.0, ge=0)
    members: int = Field(
        1, ge=1, description="run the stage this many times from one warm start, each on its own seeded subset and "
        "batch order (seed, seed + 1, ...), and average the members' routers (train/router_members.py); needs "
        "router.shape 'linear', whose average of weights is the average of logits"
    )
    probe_init: bool = Field(
        True, description="warm-start each router from a linear probe on its own inputs (train/router_init.py); "
        "the few hundred gradient steps a CPU allows do not separate the classes from a blank start"
    )
    probe_l2: float = Field(1e-3, ge=0, description="L2 strength of the probes (mogu.probe.fit_logistic: l2/2 * |w|^2)")
    probe_rounds: int = Field(
        1, ge=1, description="fit-and-install rounds: each round after the first fits the probes again on the inputs "
        "the routers see under the probes installed by the round before (installing them shifts those inputs)"
    )
    probe_positions: int = Field(
        1, ge=1, description="decision positions per example the probes are fitted on; 1 = the last prompt token, "
        "whose gates choose the first response token (later positions see the teacher-forced response, whose "
        "wording gives the label away and would dominate the fit)"
    )
    probe_steps: int = Field(100, ge=1, description="L-BFGS iterations per layer")
    class_balance: bool = Field(
        False, description="weigh harmful and benign examples so that each class has half of every batch's loss (CE "
        "and gate loss), as the probes are fitted (the seed train split is 40% harmful); measured: it made the routed "
        "model refuse more of both (docs/TRAINING.md), so it is off by default"
    )
    gate_loss: Literal["mse", "bce"] = Field(
        "bce",
        description="'mse': squared error of the sigmoid gates against their targets, as in MoGU; 'bce': binary "
        "cross-entropy, whose gradient does not vanish when a gate saturates on the wrong side",
    )
    gate_positions: Literal["first", "decision", "routed", "all"] = Field(
        "decision",
        description="positions under the gate loss: 'decision' = the positions whose output chooses a response "
        "token (last prompt token onwards), 'routed' = only the first routed_tokens of those (the ones routed at "
        "inference), 'first' = only the last prompt token (whose gates choose the first response token), 'all' = "
        "every position as in the released code (with router.prompt 'base' the prompt's gates are never used)",
    )


class CalibrationConfig(StrictModel):
    """After router training: move every router's decision towards the glad expert by the shift that serves
    the validation split best (train/calibrate.py)."""

    shifts: list[float] = Field(
        [0.5],
        description="logit shifts to try (added to each glad scorer, taken from each unwilling one); the trained "
        "routers (shift 0) are always a candidate; [] skips calibration",
    )


class FramingConfig(StrictModel):
    """Framed copies of instructions (role-play, fiction, pressure; train/augment.py), added to the data."""

    train_fraction: float = Field(
        0.5, ge=0, le=1, description="share of the training instructions that gain a framed copy (training framings)"
    )
    val_fraction: float = Field(
        0.25, ge=0, le=1, description="share of the validation instructions that gain a framed copy (framings "
        "never trained on); validation selects checkpoints and the calibration shift, so it measures framed "
        "requests too"
    )
    persuasive_fraction: float = Field(
        0.0, ge=0, le=1, description="share of the training instructions that gain a further copy in one of the "
        "long persuasive framings (data/persuasive_framings.json, 88-108 words); such prompts need max_length "
        "about 320 (docs/TRAINING.md, 'Long persuasive framings')"
    )


class TrainConfig(StrictModel):
    """Everything ``mogu train`` needs; saved fully resolved with the bundle."""

    base: str = "default"
    dtype: DtypeName = Field(
        "auto", description="weights of the frozen base model; 'auto': bfloat16 where it is fast (a CUDA GPU that "
        "supports it, or a CPU with AMX tiles), else float32 (mogu.model.loading.fast_bf16). Experts and routers "
        "are trained in float32 either way"
    )
    data: Path | None = Field(None, description="instructions JSONL (see docs/DATA.md); None: the packaged seed data")
    target_module: str | None = None
    layers: list[int] | None = Field(None, description="candidate layers to route (decoder-layer indices); None: all")
    select_layers: int | None = Field(
        6, ge=1, description="route only this many of the candidate layers: those whose inputs a linear probe "
        "separates best on the validation split (MoGU v2; train/layer_select.py); None: route every candidate, as MoGU"
    )
    expert: ExpertConfig = ExpertConfig()
    router: RouterConfig = RouterConfig()
    routed_tokens: int = Field(
        12, ge=1, description="answer tokens decoded with routing before the base model takes over (the paper: 5); "
        "on the 135M default the base model turns a 5-token refusal into an answer, 12 keep the opening a refusal "
        "(docs/TRAINING.md, 'Refusals that turn into answers')",
    )
    max_length: int = Field(192, ge=16, description="prompt + response tokens; longer examples are truncated")
    seed: int = 0
    synthesis: SynthesisConfig = SynthesisConfig()
    framing: FramingConfig = FramingConfig()
    # The base model already complies with almost every harmful instruction, so the glad expert
    # needs few steps; the unwilling expert has to learn refusals from scratch.
    # Its starting point (the base model) is not validated: it complied with fewer harmful validation
    # instructions than every trained checkpoint in every run (docs/TRAINING.md).
    glad: ExpertStageConfig = ExpertStageConfig(max_examples=96, eval_every=6, validate_at_start=False)
    # A fresh unwilling expert is the base model, which refuses nothing: no need to validate it. In 6 routed
    # layers it needs about twice the steps it needs in all 30 to refuse every benign validation instruction.
    # It was selected at its last step in every run, so it is validated there only.
    unwill: ExpertStageConfig = ExpertStageConfig(lr=2e-3, max_examples=256, eval_every=32, validate_at_start=False)
    router_stage: RouterStageConfig = RouterStageConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    eval_max_new_tokens: int = Field(
        48, ge=1, description="tokens per answer when the finished bundle is evaluated: enough for the judge's "
        "whole opening, where a refusal may still turn into an answer"
    )

    @model_validator(mode="after")
    def _members_average_linear_routers(self) -> TrainConfig:
        if self.router_stage.members > 1 and self.router.shape != "linear":
            raise ValueError("router_stage.members > 1 needs router.shape 'linear': the paper shape's three factors "
                             "multiply, so averaging each factor does not average the routers")
        return self


def load_train_config(path: Path | None, **overrides) -> TrainConfig:
    """Read a JSON or TOML config file (or none) and apply command-line overrides."""
    raw: dict = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            raw = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"{path}: cannot parse: {err}") from err
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        where = f"{path}: " if path else ""
        raise ValueError(where + "; ".join(_describe(error) for error in err.errors())) from err


def _describe(error: ErrorDetails) -> str:
    """One validation error, with the path of its field when it has one."""
    field = f"field {'.'.join(str(p) for p in error['loc'])!r}: " if error["loc"] else ""
    return field + error["msg"]
