"""Typed training configuration and its presets.

``mogu train --preset NAME --config FILE`` starts from a preset (``PRESETS``), updates it with the file
(JSON or TOML) and then with command-line options; the result is validated and saved fully resolved.
docs/configuration.md is generated from the field descriptions here (``mogu config --markdown``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails

from mogu.model.config import ROUTED_TOKENS, DtypeName, ExpertConfig, RouterConfig, StrictModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib joined the standard library in 3.11; tomli is the same parser
    import tomli as tomllib


#: The splits that can select layers, checkpoints and the calibration (docs/data.md).
ValidationSplit = Literal["val", "val_heldout", "val_style"]


class SynthesisConfig(StrictModel):
    """How responses are made for instructions that come without them."""

    max_response_tokens: int = Field(
        12, ge=4, description="only the opening of a response matters: MoGU routes the first routed_tokens"
    )
    batch_size: int = Field(32, ge=1, description="batch size of the base model's own greedy answers")


class StageConfig(StrictModel):
    """Optimisation settings shared by the three stages."""

    lr: float = Field(gt=0, description="AdamW learning rate")
    epochs: int = Field(ge=1, description="passes over the (sub)set of training examples")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear learning-rate warm-up")
    eval_every: int = Field(10, ge=1, description="optimizer steps between validation checks (and checkpoints)")
    max_examples: int | None = Field(
        None, ge=1, description="train on a seeded random subset of this size (logged); None: all training examples"
    )


class ExpertStageConfig(StageConfig):
    """Glad / unwilling expert: loss CE(wanted) / clamp(CE(unwanted), floor, ceiling).

    The floor guards against a vanishing denominator; the ceiling stops pushing
    the unwanted response away once it is already unlikely, which otherwise
    grows without limit and costs fluency.
    """

    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    epochs: int = Field(1, ge=1, description="passes over the (sub)set of training examples")
    max_examples: int | None = Field(
        192, ge=1, description="train on a seeded random subset of this size (logged); None: all training examples"
    )
    ratio_floor: float = Field(0.1, gt=0, description="lower clamp of the denominator CE(unwanted)")
    ratio_ceiling: float | None = Field(
        5.0, gt=0, description="upper clamp of the denominator CE(unwanted), in nats; None: no ceiling, as MoGU"
    )
    val_tokens: int = Field(10, ge=1, description="tokens generated per validation instruction to judge behaviour")
    max_fluency_increase: float = Field(
        1.0, ge=0, description="a checkpoint whose fluency CE (wanted responses to the other label's validation "
        "instructions) rose more than this (nats) above the base model's is not selected"
    )


class RouterStageConfig(StageConfig):
    """Routers only: CE(response under the mixed model) + alpha * gate loss."""

    lr: float = Field(3e-3, gt=0, description="AdamW learning rate")
    epochs: int = Field(1, ge=1, description="passes over the (sub)set of training examples")
    batch_size: int = Field(16, ge=1, description="examples per micro-batch")
    max_examples: int | None = Field(
        384, ge=1, description="train on a seeded random subset of this size (logged); None: all training examples"
    )
    eval_every: int = Field(
        24, ge=1, description="optimizer steps between validation checks (and checkpoints: an interrupted router "
        "stage repeats the steps since the last one)"
    )
    alpha: float = Field(2.0, ge=0, description="weight of the gate loss against the mixed model's CE")
    probe_init: bool = Field(
        True, description="warm-start each router from a linear probe on its inputs at the last prompt token of the "
        "training split (the first decision's reader is fitted in the probes step either way)"
    )
    probe_l2: float = Field(1e-3, ge=0, description="L2 strength of the probes (mogu.model.probe.fit_logistic: l2/2 * |w|^2)")
    probe_steps: int = Field(100, ge=1, description="L-BFGS iterations per layer")
    gate_loss: Literal["mse", "bce"] = Field(
        "bce",
        description="'mse': squared error of the sigmoid gates against their targets, as in MoGU; 'bce': binary "
        "cross-entropy, whose gradient does not vanish when a gate saturates on the wrong side",
    )


class CalibrationConfig(StrictModel):
    """After router training: move every router's decision towards the glad expert by one logit shift, chosen on
    the validation splits (docs/method.md, "Calibration")."""

    shifts: list[float] = Field(
        [0.5],
        description="logit shifts to try (added to each glad scorer, taken from each unwilling one) when choosing by "
        "balance: the shift with the best mean of harmful refusal and benign answering is kept; the trained routers "
        "(shift 0) are always a candidate; [] skips calibration",
    )
    max_benign_refusal: float | None = Field(
        None, ge=0, le=1, description="the operating point instead: the smallest of target_shifts (or 0) whose "
        "benign refusal on validation is at most this; the harmful refusal it costs is recorded",
    )
    target_shifts: list[float] = Field(
        [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0], min_length=1,
        description="shifts searched, smallest first, for max_benign_refusal",
    )


class FramingConfig(StrictModel):
    """Framed copies of instructions (role-play, fiction, pressure), added to the data with their labels."""

    train_fraction: float = Field(
        0.5, ge=0, le=1, description="share of the training instructions that gain a framed copy (training framings)"
    )
    val_fraction: float = Field(
        0.25, ge=0, le=1, description="share of the validation instructions that gain a framed copy (framings "
        "never trained on); validation selects checkpoints and the calibration shift, so it measures framed "
        "requests too"
    )


class TrainConfig(StrictModel):
    """Everything ``mogu train`` needs; saved fully resolved with the bundle."""

    base: str = Field("default", description="base model: 'default' (the embedded SmolLM2-135M-Instruct), a local "
                      "Hugging Face folder, a .gguf file or a hub id")
    dtype: DtypeName = Field(
        "auto", description="weights of the frozen base model; 'auto': bfloat16 where it is fast (a CUDA GPU that "
        "supports it, or a CPU with AMX tiles or AVX-512-BF16), else float32. Experts and routers train in float32 either way"
    )
    data: Path | None = Field(
        None, description="instructions JSONL, optionally gzipped (docs/data.md); None: the packaged instruction set "
        "(mogu/data/instructions.jsonl.gz)"
    )
    train_per_label: int | None = Field(
        150, ge=1, description="read at most this many training instructions of each label (a stable draw; the "
        "count is logged); None: all. Responses are made only for the instructions read"
    )
    probe_per_label: int | None = Field(
        600, ge=1, description="training instructions of each label whose prompts fit the probes on the base model "
        "(the choice of routed layers and the first decision's reader), or train_per_label if that is more: a stable "
        "draw that holds the stages' one; only prompts are read, so no response is made for the others; None: all"
    )
    validation: list[ValidationSplit] = Field(
        ["val_heldout", "val_style"], min_length=1, description="the splits that choose the routed layers, the checkpoints and the "
        "calibration: 'val' a random slice of the training pool, 'val_heldout' whole categories and task types never "
        "trained on, 'val_style' instructions written in another style"
    )
    validation_per_label: int | None = Field(
        25, ge=1, description="at most this many instructions of each label from each validation split (a stable "
        "draw); None: all"
    )
    target_module: str | None = Field(
        None, description="the projection to route, named inside a decoder layer (e.g. 'self_attn.o_proj'); None: "
        "the attention output projection of the architecture"
    )
    layers: list[int] | None = Field(None, description="candidate layers to route (decoder-layer indices); None: all")
    select_layers: int | None = Field(
        6, ge=1, description="route only this many of the candidate layers: those whose inputs a linear probe "
        "separates best on the validation split, as MoGU v2; None: route every candidate, as MoGU"
    )
    reader_layers: Literal["candidates", "routed"] = Field(
        "candidates", description="what the first decision's reader (router.first 'reader') reads at the last "
        "prompt token: 'candidates' the projection inputs of every candidate layer (`layers`), 'routed' those of the "
        "routed layers only"
    )
    expert: ExpertConfig = ExpertConfig()
    router: RouterConfig = RouterConfig()
    routed_tokens: int = Field(
        ROUTED_TOKENS, ge=1, description="answer tokens decoded with routing before the base model takes over"
    )
    max_length: int = Field(192, ge=16, description="prompt + response tokens; longer examples are truncated")
    seed: int = Field(0, description="seed of every random draw: initialisation, subsets, batch order, framings")
    synthesis: SynthesisConfig = SynthesisConfig()
    framing: FramingConfig = FramingConfig()
    # The base model already complies with almost every harmful instruction, so the glad expert needs few
    # steps; the unwilling expert has to learn refusals from scratch.
    glad: ExpertStageConfig = ExpertStageConfig(max_examples=96, eval_every=6)
    unwill: ExpertStageConfig = ExpertStageConfig(lr=2e-3, max_examples=256, eval_every=32)
    router_stage: RouterStageConfig = RouterStageConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    eval_validation_per_label: int | None = Field(
        10, ge=1, description="instructions of each label from each validation split that the finished bundle's "
        "evaluation answers beside the test split (a stable draw); None: all"
    )
    eval_max_new_tokens: int = Field(
        48, ge=1, description="tokens per answer when the finished bundle is evaluated: enough for the judge's "
        "whole opening, where a refusal may still turn into an answer"
    )


PresetName = Literal["default", "paper"]

#: Each preset as the sections and values it changes from the ``TrainConfig`` defaults. ``default`` is this
#: project's design; ``paper`` is MoGU as released: every layer routed, the paper's router shape reading its
#: own layer at every position (prompt too), the routers taking every decision, the MSE gate loss, no probe warm
#: start or calibration, the unclamped ratio loss, no framed copies and 5 routed tokens. Step budgets stay this
#: project's (docs/training.md).
PRESETS: dict[str, dict] = {
    "default": {},
    "paper": {
        "select_layers": None,
        "routed_tokens": 5,
        "router": {"shape": "paper", "input_norm": False, "reads": "own", "prompt": "routed", "first": "routers", "later": "routers"},
        "router_stage": {"gate_loss": "mse", "probe_init": False, "lr": 5e-4},
        "glad": {"ratio_ceiling": None},
        "unwill": {"ratio_ceiling": None},
        "calibration": {"shifts": []},
        "framing": {"train_fraction": 0.0, "val_fraction": 0.0},
    },
}


def merge(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``, section by section: a dict value updates that section's keys."""
    merged = dict(base)
    for key, value in update.items():
        section = merged.get(key)
        merged[key] = merge(section, value) if isinstance(value, dict) and isinstance(section, dict) else value
    return merged


def load_train_config(path: Path | None = None, preset: str = "default", **overrides) -> TrainConfig:
    """The ``preset``, updated by a JSON or TOML config file (or none), then by command-line overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    raw: dict = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            raw = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"{path}: cannot parse: {err}") from err
    # every layer starts from the full default config, so that a section given in part keeps the defaults
    # of its other keys (the glad and unwilling stages' own among them)
    raw = merge(merge(merge(TrainConfig().model_dump(), PRESETS[preset]), raw),
                {k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        where = f"{path}: " if path else ""
        raise ValueError(where + "; ".join(_describe(error) for error in err.errors())) from err


def _describe(error: ErrorDetails) -> str:
    """One validation error, with the path of its field when it has one."""
    field = f"field {'.'.join(str(p) for p in error['loc'])!r}: " if error["loc"] else ""
    return field + error["msg"]
