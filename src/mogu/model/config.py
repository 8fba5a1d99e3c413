"""Typed configuration objects.

Every object here is a pydantic model so that a bad value is reported with the
name of the field that holds it, and so that a resolved config can be written
next to every output (``mogu.io.provenance.resolved_dict``) and read back unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mogu import __version__

Mode = Literal["base", "glad", "unwill", "mogu", "fixed"]
EXPERTS: tuple[str, str] = ("glad", "unwill")
#: The base model's weight dtype as configs and commands name it: ``auto`` picks by hardware
#: (``mogu.model.loading.resolve_dtype``).
DtypeName = Literal["auto", "float32", "bfloat16"]


class StrictModel(BaseModel):
    """Base for configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExpertConfig(StrictModel):
    """LoRA shape shared by both experts (MoGU: r 8, alpha 16, dropout 0.05)."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout on the expert's input while training")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class RouterConfig(StrictModel):
    """The per-layer router: two independent sigmoid scorers (w_unwill, w_glad) per routed layer."""

    shape: Literal["paper", "linear"] = Field(
        "linear", description="'paper': Linear(d, hidden, no bias) -> Linear(hidden, d) -> Linear(d, 1) -> sigmoid, "
        "as released; 'linear': Linear(d, 1) -> sigmoid, the same function class with d + 1 parameters. A trained "
        "paper-shape router is folded into the linear shape when a bundle is loaded",
    )
    hidden: int = Field(512, ge=1, description="width of the paper shape's bottleneck")
    input_norm: bool = Field(
        True, description="divide each router input by its RMS: the input of the attention output projection is not "
        "normalised and its scale differs from layer to layer",
    )
    init_bias: float = Field(0.0, description="initial logit of both scorers (0: weight 0.5)")
    reads: Literal["own", "stack"] = Field(
        "stack", description="'own': each router scores the input of its own projection, as MoGU; 'stack': that input "
        "together with the inputs of the routed layers below it at the same position",
    )
    prompt: Literal["routed", "base"] = Field(
        "base", description="'routed': the experts are mixed at every prompt position, as MoGU; 'base': the base "
        "model reads the prompt and routing starts at its last token, whose output is the first answer token",
    )
    first: Literal["routers", "reader"] = Field(
        "reader", description="who takes the first decision (at the last prompt token): 'routers', each routed "
        "layer's own router, as MoGU; 'reader', one linear reader of the base model's projection inputs (the routed "
        "layers', or more: the bundle's reader_layers) whose gates every routed layer takes there (needs prompt "
        "'base')",
    )
    later: Literal["routers", "reader"] = Field(
        "reader", description="who sets the gates of the routed positions after the first decision: 'routers', each "
        "routed layer's router token by token, as MoGU; 'reader', the first decision's gates hold for the whole routed "
        "opening (needs first 'reader'; the routers are then neither trained nor read)",
    )

    @model_validator(mode="before")
    @classmethod
    def _routers_decide_later_too(cls, data: Any) -> Any:
        """Without a reader nothing can hold its decision: ``later`` follows ``first`` "routers" unless given."""
        if isinstance(data, dict) and data.get("first") == "routers" and "later" not in data:
            return {**data, "later": "routers"}
        return data

    @model_validator(mode="after")
    def _paper_reads_its_own_layer(self) -> RouterConfig:
        if self.first == "reader" and self.prompt != "base":
            raise ValueError("router.first 'reader' needs router.prompt 'base': the reader reads the base model's "
                             "pass over the prompt")
        if self.later == "reader" and self.first != "reader":
            raise ValueError("router.later 'reader' needs router.first 'reader': it holds the reader's first decision")
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
# input, before ``router.first`` the routers took the first decision, before ``router.later`` they took the later ones.
OLDER_ROUTER: dict[str, str] = {"prompt": "routed", "reads": "own", "first": "routers", "later": "routers"}


def with_older_router(config: Any) -> Any:
    """``config`` (a saved bundle or training config, as a dict) with its router section's missing settings
    read as they were before those settings existed (``OLDER_ROUTER``)."""
    if isinstance(config, dict) and isinstance(config.get("router"), dict):
        return {**config, "router": {**OLDER_ROUTER, **config["router"]}}
    return config


#: Answer tokens decoded with routing before the base model takes over, unless a bundle or config says
#: otherwise. MoGU decodes 5; on the 135M default model the base model turned a 5-token refusal into an answer
#: (docs/ablations.md).
ROUTED_TOKENS = 12


class MoGUConfig(StrictModel):
    """Everything needed to rebuild a MoGU model on top of its base model."""

    base: BaseModelInfo
    target_modules: list[str] = Field(description="full module names of the routed projections")
    layers: list[int] = Field(description="decoder-layer index of each target, same order")
    reader_modules: list[str] | None = Field(
        None, description="full module names of the projections whose inputs the first decision's reader reads "
        "(router.first 'reader'); None: the routed ones",
    )
    reader_layers: list[int] | None = Field(None, description="decoder-layer index of each reader module, same order")
    expert: ExpertConfig = ExpertConfig()
    router: RouterConfig = RouterConfig()
    routed_tokens: int = Field(
        ROUTED_TOKENS, ge=0, description="answer tokens decoded with routing before the base model takes over"
    )
    chat_template: str | None = None
    mogu_version: str = __version__

    @model_validator(mode="before")
    @classmethod
    def _older_bundles(cls, data: Any) -> Any:
        """Bundles written by mogu 0.1: their router section as trained, and no hand-over setting (the base
        model always re-reads prompt and routed tokens now)."""
        data = with_older_router(data)
        if isinstance(data, dict) and "handover" in data:
            data = {k: v for k, v in data.items() if k != "handover"}
        return data

    @model_validator(mode="after")
    def _same_length(self) -> MoGUConfig:
        if len(self.target_modules) != len(self.layers):
            raise ValueError("target_modules and layers must have the same length")
        if (self.reader_modules is None) != (self.reader_layers is None) or len(self.reader_modules or []) != len(
                self.reader_layers or []):
            raise ValueError("reader_modules and reader_layers must both be given, with the same length, or neither")
        return self

    def reader_targets(self) -> list[tuple[str, int]]:
        """(full module name, decoder-layer index) of each projection the first decision's reader reads."""
        if self.reader_modules is None:
            return list(zip(self.target_modules, self.layers))
        return list(zip(self.reader_modules, self.reader_layers or []))


class DecodingConfig(StrictModel):
    """How to decode: shared by ``generate``, the CLI, evaluation and the server.

    ``temperature`` 0 means greedy. ``routed_tokens`` defaults
    to the bundle's own setting when left at None. ``mode`` applies to the
    routed tokens only: ``mogu`` is the method; ``base``, ``glad``, ``unwill``
    and ``fixed`` (with ``fixed`` weights) are ablations.
    """

    max_new_tokens: int = Field(256, ge=1, description="answer tokens at most, routed ones included")
    min_new_tokens: int = Field(0, ge=0, description="EOS is ignored before this many tokens (benchmarks)")
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling: keep the smallest set of tokens with "
                         "this much probability")
    top_k: int = Field(0, ge=0, description="0: no top-k filter")
    seed: int | None = Field(None, description="seed for sampling")
    stop: list[str] = Field(default_factory=list, description="strings that end the answer (not included in it)")
    routed_tokens: int | None = Field(None, ge=0, description="answer tokens decoded with routing; None: the bundle's")
    mode: Mode = Field("mogu", description="how the routed tokens are decoded; other modes serve ablations")
    fixed: tuple[float, float] = Field((0.5, 0.5), description="(w_unwill, w_glad) for mode 'fixed'")
    return_gates: bool = Field(False, description="return the router weights of the routed tokens")

    @model_validator(mode="after")
    def _no_empty_stop(self) -> DecodingConfig:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self
