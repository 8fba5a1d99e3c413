"""``MoGUModel``: a stock causal LM whose target projections are routed MoGU layers, built on a base model or
loaded from a bundle (the files: ``mogu.model.bundle_files``)."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mogu.model import generation
from mogu.model.config import (
    EXPERTS,
    ROUTED_TOKENS,
    BaseModelInfo,
    DecodingConfig,
    ExpertConfig,
    Mode,
    MoGUConfig,
    RouterConfig,
)
from mogu.model.chat import ChatInput
from mogu.model.generation import Generation, TextCallback
from mogu.model.layer import MoGULayer, RoutingState, projection_features
from mogu.model.loading import DEFAULT_MODEL, load_base
from mogu.model.positions import decision_mask
from mogu.model.router import Router
from mogu.model.bundle_files import (
    WeightFiles,
    CONFIG_NAME,
    ROUTER_NAME,
    BundleError,
    bundle_parts,
    is_bundle,
    read_config,
)
from mogu.model.targets import find_targets

log = logging.getLogger(__name__)

Stage = Literal["glad", "unwill", "router"]


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    """Hand the vocabulary projection a contiguous input. ``generate`` gives it the last position of the
    prompt, a strided slice, and on CPU torch then multiplies by way of a batched product that copies the
    whole (vocabulary x hidden) matrix once per row: in bfloat16 on the default model, 12 tokens for 32
    prompts took 7.9 s that way and 1.8 s with this hook (float32: 5.3 s and 5.1 s)."""
    return (args[0].contiguous(), *args[1:])


@contextlib.contextmanager
def _captured_inputs(pick: Callable[[torch.Tensor], torch.Tensor],
                     modules: dict[int, nn.Module]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """While open, ``pick(h)`` of the input ``h`` of each module, per forward, by its key."""
    captured: dict[int, list[torch.Tensor]] = {index: [] for index in modules}

    def hook(index: int):
        return lambda _module, args: captured[index].append(pick(args[0]))

    handles = [module.register_forward_pre_hook(hook(index)) for index, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class MoGUModel(WeightFiles, nn.Module):
    """A frozen base model whose target projections are replaced by ``MoGULayer``s."""

    def __init__(self, base_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: MoGUConfig) -> None:
        super().__init__()
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.config = config
        self.state = RoutingState()
        base_model.requires_grad_(False)
        head = base_model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(_contiguous_input)
        self.layers: list[MoGULayer] = self._inject()  # a plain list: the modules are registered inside base_model
        self.reader: Router | None = self._make_reader()
        self.eval()

    def _inject(self) -> list[MoGULayer]:
        """Replace each target projection of ``self.config`` by a new ``MoGULayer`` around it."""
        layers = []
        ascending = sorted(self.config.layers)
        for name, index in zip(self.config.target_modules, self.config.layers):
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name)
            original = getattr(parent, child)
            reads = tuple(i for i in ascending if i <= index) if self.config.router.reads == "stack" else (index,)
            layer = MoGULayer(original, index, self.config.expert, self.config.router, self.state, reads)
            layer.lora_A.to(original.weight.device)
            layer.lora_B.to(original.weight.device)
            layer.router.to(original.weight.device)
            # a new module starts in training mode: with LoRA dropout on, a model put in eval mode
            # before route would otherwise drop out in every forward until the next .eval()
            layer.train(self.training)
            setattr(parent, child, layer)
            layers.append(layer)
        if self.config.router.reads == "stack":
            for layer in layers:
                layer.readers = tuple((reader.layer_index, reader.router, reader.reads.index(layer.layer_index))
                                      for reader in layers if layer.layer_index in reader.reads)
        return layers

    def _make_reader(self) -> Router | None:
        """Under ``router.first`` "reader": the first decision's reader, a linear router over the base model's
        inputs of the projections ``config.reader_targets()`` names (the routed ones unless the bundle says
        more; fitted by ``train.probes``), on the routed layers' device; else (or while no layer is routed)
        None."""
        if self.config.router.first != "reader" or not self.layers:
            return None
        modules = [self.base_model.get_submodule(name) for name, _ in self.config.reader_targets()]
        widths = {m.in_features if isinstance(m, MoGULayer) else projection_features(m)[0] for m in modules}
        if len(widths) != 1:
            raise ValueError(f"the reader's projections take inputs of different widths {sorted(widths)}")
        cfg = self.config.router.model_copy(update={"shape": "linear", "input_norm": True})
        with torch.random.fork_rng(devices=[]):  # draws nothing from the stream the experts' init draws from next
            reader = Router(widths.pop(), cfg, pieces=len(self.config.reader_targets()))
        with torch.no_grad():
            for scorer in (reader.unwill, reader.glad):
                scorer.weight.zero_()  # reads nothing until fitted: 0.5 / 0.5, like fresh routers
        return reader.to(self.layers[0].base_layer.weight.device)

    def named_routers(self) -> dict[str, Router]:
        """Every router by its key prefix in ``router.safetensors``: ``layers.<i>``, and ``reader`` when there
        is one."""
        routers = {f"layers.{layer.layer_index}": layer.router for layer in self.layers}
        if self.reader is not None:
            routers["reader"] = self.reader
        return routers

    def route(self, layers: list[int] | None, target_module: str | None = None,
              reader_layers: list[int] | None = None) -> None:
        """Route ``layers`` (decoder-layer indices; None: all) of a model that routes none yet, with new experts and
        routers: training measures which layers to route on the base model first, then routes just those.
        ``target_module`` names the projection inside a decoder layer (default: the architecture's).
        ``reader_layers``: the layers whose projection inputs the first decision's reader reads (None: the routed
        ones)."""
        if self.layers:
            raise ValueError(f"this model already routes layers {self.config.layers}")
        targets = find_targets(self.base_model, target_module, layers)
        read = find_targets(self.base_model, target_module, reader_layers) if reader_layers is not None else None
        self.config = self.config.model_copy(update={
            "target_modules": [t.full_name for t in targets], "layers": [t.layer for t in targets],
            "reader_modules": [t.full_name for t in read] if read else None,
            "reader_layers": [t.layer for t in read] if read else None})
        self.layers = self._inject()
        self.reader = self._make_reader()

    # ----------------------------------------------------------------- building
    @classmethod
    def from_base(
        cls,
        source: str = DEFAULT_MODEL,
        *,
        target_module: str | None = None,
        layers: list[int] | None = None,
        expert: ExpertConfig | None = None,
        router: RouterConfig | None = None,
        routed_tokens: int = ROUTED_TOKENS,
        chat_template: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
    ) -> MoGUModel:
        """A new MoGU model on a base model: experts equal to the base (LoRA B = 0), fresh routers."""
        held = bundle_parts(source)
        if held and not is_bundle(source):
            raise BundleError(
                f"{source} looks like a MoGU bundle (it holds {', '.join(held)}) but has no {CONFIG_NAME}"
            )
        loaded = load_base(source, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        return cls.wrap(
            loaded.model,
            loaded.tokenizer,
            loaded.info,
            target_module=target_module,
            layers=layers,
            expert=expert,
            router=router,
            routed_tokens=routed_tokens,
            chat_template=chat_template,
        )

    @classmethod
    def wrap(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        info: BaseModelInfo,
        *,
        target_module: str | None = None,
        layers: list[int] | None = None,
        expert: ExpertConfig | None = None,
        router: RouterConfig | None = None,
        routed_tokens: int = ROUTED_TOKENS,
        chat_template: str | None = None,
    ) -> MoGUModel:
        """Wrap an already loaded model (``info`` is its ``BaseModelInfo``)."""
        targets = find_targets(model, target_module, layers)
        config = MoGUConfig(
            base=info,
            target_modules=[t.full_name for t in targets],
            layers=[t.layer for t in targets],
            expert=expert or ExpertConfig(),
            router=router or RouterConfig(),
            routed_tokens=routed_tokens,
            chat_template=chat_template,
        )
        return cls(model, tokenizer, config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        base: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        check_base: bool = True,
        fold_routers: bool = True,
    ) -> MoGUModel:
        """Load a bundle; ``base`` overrides where the base model is loaded from.

        ``fold_routers`` collapses paper-shape routers into the equivalent linear
        ones (``router.fold_state_dict``): the same outputs, for inference; pass
        False to keep training the original parameterisation.
        """
        path = Path(path)
        config = read_config(path)
        loaded = load_base(base or config.base.source, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        if check_base and loaded.info.fingerprint != config.base.fingerprint:
            raise BundleError(
                f"{path} was built on base model {config.base.source!r} (fingerprint {config.base.fingerprint[:12]}), "
                f"but {loaded.info.source!r} has fingerprint {loaded.info.fingerprint[:12]}: a different model"
            )
        fold = fold_routers and config.router.shape == "paper"
        if fold:  # build linear routers and fold the saved ones into them: the paper shape is never allocated
            config = config.model_copy(update={"router": config.router.model_copy(update={"shape": "linear"})})
        model = cls(loaded.model, loaded.tokenizer, config)
        for name in EXPERTS:
            model.load_expert(name, path / name)
        model.load_router(path / ROUTER_NAME, fold=fold)
        return model

    @classmethod
    def load(cls, target: str | Path, **kwargs) -> MoGUModel:
        """A bundle folder (holding ``mogu_config.json``) or, otherwise, a fresh MoGU model on a base model."""
        if is_bundle(target):
            return cls.from_pretrained(target, **kwargs)
        return cls.from_base(str(target), **kwargs)

    # -------------------------------------------------------------- running
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(
        self,
        prompts: ChatInput | Sequence[ChatInput],
        decoding: DecodingConfig | None = None,
        on_text: TextCallback | None = None,
    ) -> list[Generation]:
        """Answer chat prompts: routed first tokens, then the base model (see ``mogu.model.generation``).

        ``prompts`` is a batch of prompts (strings or message lists) or a single prompt (a string, or one
        list of message dicts); either way the answers come as a list, one ``Generation`` per prompt.
        """
        return generation.generate(self, prompts, decoding, on_text)

    def stream(self, prompt: ChatInput, decoding: DecodingConfig | None = None) -> Iterator[str]:
        """Yield the answer to one prompt as it is decoded (see ``mogu.model.generation.stream``)."""
        return generation.stream(self, prompt, decoding)

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    def set_mode(self, mode: Mode, fixed: tuple[float, float] | None = None) -> None:
        """Switch every routed layer; ``fixed`` is (w_unwill, w_glad) for mode ``fixed``."""
        if mode not in ("base", "glad", "unwill", "mogu", "fixed"):
            raise ValueError(f"unknown mode {mode!r}")
        self.state.mode = mode
        if fixed is not None:
            self.state.fixed = (float(fixed[0]), float(fixed[1]))

    @contextlib.contextmanager
    def mode(
        self,
        mode: Mode,
        fixed: tuple[float, float] | None = None,
        record: bool | None = None,
        labels: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Temporarily switch mode (and gate recording).

        ``labels`` (batch, seq; prompt and padding masked) are those of the
        forward passes to come over whole known sequences (training, probes):
        under ``router.prompt`` "base" they say which positions are routed.
        Generation needs none (``mogu.model.generation`` reads the prompt in mode base).
        """
        previous = (self.state.mode, self.state.fixed, self.state.record, self.state.routed)
        self.set_mode(mode, fixed)
        if record is not None:
            self.state.record = record
        if labels is not None and self.config.router.prompt == "base":
            self.state.routed = decision_mask(labels).to(self.device)
        try:
            yield
        finally:
            self.state.mode, self.state.fixed, self.state.record, self.state.routed = previous

    @contextlib.contextmanager
    def routed_inputs(
        self, pick: Callable[[torch.Tensor], torch.Tensor], layers: list[int] | None = None, target_module: str | None = None
    ) -> Iterator[dict[int, list[torch.Tensor]]]:
        """While open, ``pick(h)`` of the input ``h`` of every routed projection, per forward, by layer index:
        what the routers read, for the probes. With ``layers``, the inputs of those layers' target projections
        (``target_module``, default the architecture's), routed or not: what their routers would read."""
        modules = ({layer.layer_index: layer for layer in self.layers} if layers is None else
                   {t.layer: self.base_model.get_submodule(t.full_name) for t in find_targets(self.base_model, target_module, layers)})
        with _captured_inputs(pick, modules) as captured:
            yield captured

    @contextlib.contextmanager
    def reader_inputs(self, pick: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[dict[int, list[torch.Tensor]]]:
        """``routed_inputs`` for the projections the first decision's reader reads."""
        modules = {index: self.base_model.get_submodule(name) for name, index in self.config.reader_targets()}
        with _captured_inputs(pick, modules) as captured:
            yield captured

    def gates(self) -> torch.Tensor:
        """Gate weights of the last recorded forward: (layers, batch, seq, 2), [..., 0] unwill, [..., 1] glad."""
        if not self.state.gates:
            raise RuntimeError("no gates recorded: run a forward pass in mode 'mogu' or 'fixed' with record=True")
        return torch.stack([self.state.gates[i] for i in self.config.layers])

    # ------------------------------------------------------------ parameters
    def stage_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """The parameters a training stage updates; nothing else gets gradients."""
        if stage == "router":
            return [p for layer in self.layers for p in layer.router.parameters()]
        if stage in EXPERTS:
            return [p for layer in self.layers for p in (layer.lora_A[stage].weight, layer.lora_B[stage].weight)]
        raise ValueError(f"unknown stage {stage!r}")

    def set_trainable(self, stage: Stage | None) -> list[nn.Parameter]:
        """Freeze everything, then unfreeze the parameters of ``stage`` (None: all frozen)."""
        self.requires_grad_(False)
        if stage is None:
            return []
        params = self.stage_parameters(stage)
        for p in params:
            p.requires_grad_(True)
        return params

    def parameter_counts(self) -> dict[str, int]:
        mogu_params = {id(p) for layer in self.layers for p in layer.parameters()} - {
            id(p) for layer in self.layers for p in layer.base_layer.parameters()
        }
        counts = {
            "base": sum(p.numel() for p in self.base_model.parameters() if id(p) not in mogu_params),
            "router": sum(p.numel() for p in self.stage_parameters("router")),
        }
        for name in EXPERTS:
            counts[f"expert_{name}"] = sum(p.numel() for p in self.stage_parameters(name))
        if self.reader is not None:
            counts["reader"] = sum(p.numel() for p in self.reader.parameters())
        return counts
