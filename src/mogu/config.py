"""Typed configuration objects.

Every object here is a pydantic model so that a bad value is reported with the
name of the field that holds it, and so that a resolved config can be written
next to every output (`dump_resolved`) and read back unchanged.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mogu import __version__

Mode = Literal["base", "glad", "unwill", "mogu", "fixed"]
#: The modes a ``mogu serve`` request may ask for (``fixed`` takes weights the API has no field for).
RequestMode = Literal["mogu", "base", "glad", "unwill"]
EXPERTS: tuple[str, str] = ("glad", "unwill")
#: The base model's weight dtype as configs and commands name it: ``auto`` picks by hardware
#: (``mogu.model.loading.resolve_dtype``).
DtypeName = Literal["auto", "float32", "bfloat16"]
#: How the base model takes over after the routed tokens (``mogu.generate``).
HandoverName = Literal["cached", "faithful"]


class StrictModel(BaseModel):
    """Base for configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExpertConfig(StrictModel):
    """LoRA shape shared by both experts (MoGU: r 8, alpha 16, dropout 0.05)."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class RouterConfig(StrictModel):
    """Shape of the per-layer router (two independent sigmoid scorers).

    ``paper``: Linear(d, hidden, no bias) -> Linear(hidden, d) -> Linear(d, 1),
    as released by the authors (a linear map, heavily over-parameterised).
    ``linear``: Linear(d, 1), the same function class with d + 1 parameters,
    the default: under Adam the paper's three factors move their product far
    faster than one vector does, and on the default model paper-shape routers
    saturated into per-layer constants (docs/TRAINING.md). A trained
    paper-shape router is folded into this shape when a bundle is loaded.
    ``input_norm`` divides the router input by its RMS: the input of the
    attention output projection is not normalised, and its scale differs from
    layer to layer, which makes a shared learning rate a poor fit.
    ``reads`` says what each router scores: ``own``, the input of its own
    projection, as MoGU; ``stack``, that input together with the inputs of the
    routed layers below it at the same position (each RMS-normalised when
    ``input_norm``), so that a later router decides on what every earlier
    routed layer saw: on the default model, probes on the stacked inputs told
    harmful from benign validation prompts apart better than probes on each
    layer's own input (docs/TRAINING.md, "Routers that read the layers below").
    The paper shape reads its own layer only. Each routed input is projected once
    for every router that reads it (``MoGULayer._gates``), so stacking costs about
    what "own" does even with every layer routed (all 30, bfloat16: 0.80 of a plain
    LoRA step's throughput, "own" 0.76 in the same run).
    ``prompt`` says how the prompt is read in the routed modes: ``routed``
    mixes the experts at every position, as the paper does; ``base`` reads the
    prompt up to its last token with the base model alone and routes only the
    positions whose output chooses a response token (the last prompt token
    onwards), so the routers there alone decide: measured better on the
    validation split, above all on framed requests (docs/TRAINING.md,
    "Reading the prompt"). Bundles saved before this field existed read
    prompts ``routed`` (``MoGUConfig``).
    ``first`` says who decides at the first decision position (the last prompt
    token, whose output is the first response token): ``routers``, each routed
    layer's router, as MoGU; ``reader``, one linear reader of the base model's
    routed-layer inputs there (each RMS-normalised), fitted on the training
    split like the routers' warm start, whose gates every routed layer takes at
    that position. The routed model refuses when any one layer leans to the
    unwilling expert, and the lowest routers read least; the reader gives every
    layer the decision of the fullest reading (docs/TRAINING.md, "One reader for
    the first decision"). Needs ``prompt`` "base" (the base model's reading of
    the prompt is taken from the same pass). Later positions are routed as usual.
    """

    shape: Literal["paper", "linear"] = "linear"
    hidden: int = Field(512, ge=1)
    input_norm: bool = True
    init_bias: float = Field(0.0, description="initial logit of both scorers (0 -> weight 0.5)")
    reads: Literal["own", "stack"] = "stack"
    prompt: Literal["routed", "base"] = "base"
    first: Literal["routers", "reader"] = "reader"

    @model_validator(mode="after")
    def _paper_reads_its_own_layer(self) -> RouterConfig:
        if self.first == "reader" and self.prompt != "base":
            raise ValueError("router.first 'reader' needs router.prompt 'base': the reader reads the base model's "
                             "pass over the prompt")
        if self.shape == "paper" and self.reads == "stack":
            raise ValueError(
                "router.shape 'paper' needs router.reads 'own': its first factor is a (hidden x inputs) matrix, and "
                "stacked inputs grow with every routed layer (about 550M router parameters with all 30 layers of "
                "the default model routed)"
            )
        return self


class BaseModelInfo(StrictModel):
    """Identity of the base model a bundle was built on."""

    source: str = Field(description="what the user named: 'default', a folder, a GGUF file or a hub id")
    name_or_path: str = ""
    architecture: str = ""
    model_type: str = ""
    fingerprint: str = Field("", description="sha256 over names, shapes and sampled values of the weights")


# What a router section saved before a setting existed was trained and used with (not today's defaults):
# before ``router.prompt`` every position was routed, before ``router.reads`` each router read its own layer's
# input, before ``router.first`` the routers took the first decision.
OLDER_ROUTER: dict[str, str] = {"prompt": "routed", "reads": "own", "first": "routers"}


def with_older_router(config: Any) -> Any:
    """``config`` (a saved bundle or training config, as a dict) with its router section's missing settings
    read as they were before those settings existed (``OLDER_ROUTER``)."""
    if isinstance(config, dict) and isinstance(config.get("router"), dict):
        return {**config, "router": {**OLDER_ROUTER, **config["router"]}}
    return config


class MoGUConfig(StrictModel):
    """Everything needed to rebuild a MoGU model on top of its base model."""

    base: BaseModelInfo
    target_modules: list[str] = Field(description="full module names of the routed projections")
    layers: list[int] = Field(description="decoder-layer index of each target, same order")
    expert: ExpertConfig = ExpertConfig()
    router: RouterConfig = RouterConfig()
    routed_tokens: int = Field(5, ge=0, description="tokens decoded with routing before the base model takes over")
    handover: HandoverName = Field(
        "faithful",
        description="faithful: the base model re-reads prompt + routed tokens (measured on the default bundle: cached "
        "gives the same answer for 7 of 64 prompts, README)",
    )
    chat_template: str | None = None
    mogu_version: str = __version__

    @model_validator(mode="before")
    @classmethod
    def _router_of_older_bundles(cls, data: Any) -> Any:
        return with_older_router(data)

    @model_validator(mode="after")
    def _same_length(self) -> MoGUConfig:
        if len(self.target_modules) != len(self.layers):
            raise ValueError("target_modules and layers must have the same length")
        return self


def git_commit(path: Path | None = None) -> str | None:
    """Commit of the source tree mogu runs from, if it is a git checkout."""
    here = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """Versions that produced an output, saved beside it."""
    import peft
    import torch
    import transformers

    return {
        "mogu": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def resolved_dict(config: BaseModel) -> dict[str, Any]:
    """The config with every default filled in, plus provenance."""
    return {"config": config.model_dump(mode="json"), "provenance": provenance()}


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


class DecodingConfig(StrictModel):
    """How to decode: shared by ``generate``, the CLI, evaluation and the server.

    ``temperature`` 0 means greedy. ``routed_tokens`` and ``handover`` default
    to the bundle's own settings when left at None. ``mode`` applies to the
    routed tokens only: ``mogu`` is the method; ``base``, ``glad``, ``unwill``
    and ``fixed`` (with ``fixed`` weights) are ablations.
    """

    max_new_tokens: int = Field(256, ge=1)
    min_new_tokens: int = Field(0, ge=0, description="EOS is ignored before this many tokens (benchmarks)")
    temperature: float = Field(0.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0: no top-k filter")
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, description="strings that end the answer (not included in it)")
    routed_tokens: int | None = Field(None, ge=0)
    handover: HandoverName | None = None
    mode: Mode = Field("mogu", description="how the routed tokens are decoded; other modes serve ablations")
    fixed: tuple[float, float] = Field((0.5, 0.5), description="(w_unwill, w_glad) for mode 'fixed'")
    return_gates: bool = False

    @model_validator(mode="after")
    def _no_empty_stop(self) -> DecodingConfig:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self
