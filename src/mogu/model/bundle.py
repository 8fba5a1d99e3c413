"""``MoGUModel``: a stock causal LM with routed projections, and its bundle on disk.

A bundle is a folder::

    mogu_config.json        MoGUConfig + provenance + sha256 of every file below
    glad/  unwill/          ordinary PEFT LoRA adapters (adapter_config.json,
                            adapter_model.safetensors), loadable on their own
                            with PeftModel.from_pretrained
    router.safetensors      the routers, keyed by decoder-layer index
    (train_config.json, train_log.jsonl, ... written by training)

Weights are safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mogu.io.files import write_json_atomic
from mogu.io.provenance import provenance
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
from mogu.model.layer import MoGULayer, RoutingState
from mogu.model.loading import DEFAULT_MODEL, load_base
from mogu.model.positions import decision_mask
from mogu.model.router import PAPER_KEYS, Router, fold_state_dict
from mogu.model.targets import find_targets

log = logging.getLogger(__name__)

CONFIG_NAME = "mogu_config.json"
ROUTER_NAME = "router.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
Stage = Literal["glad", "unwill", "router"]


class BundleError(ValueError):
    """A bundle or adapter on disk is missing, corrupt, or does not fit the model."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BundleError(f"missing file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"corrupt safetensors file {path}: {err}") from err


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    """Hand the vocabulary projection a contiguous input. ``generate`` gives it the last position of the
    prompt, a strided slice, and on CPU torch then multiplies by way of a batched product that copies the
    whole (vocabulary x hidden) matrix once per row: in bfloat16 on the default model, 12 tokens for 32
    prompts took 7.9 s that way and 1.8 s with this hook (float32: 5.3 s and 5.1 s)."""
    return (args[0].contiguous(), *args[1:])


class MoGUModel(nn.Module):
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
        """Under ``router.first`` "reader": the first decision's reader, a linear router over every routed
        layer's input (``RouterConfig.first``; fitted by ``train.router_init.fit_reader``), on the routed
        layers' device; else (or while no layer is routed) None."""
        if self.config.router.first != "reader" or not self.layers:
            return None
        cfg = self.config.router.model_copy(update={"shape": "linear", "input_norm": True})
        with torch.random.fork_rng(devices=[]):  # draws nothing from the stream the experts' init draws from next
            reader = Router(self.layers[0].in_features, cfg, pieces=len(self.layers))
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

    def route(self, layers: list[int] | None, target_module: str | None = None) -> None:
        """Route ``layers`` (decoder-layer indices; None: all) of a model that routes none yet, with new experts and
        routers: training measures which layers to route on the base model first, then routes just those.
        ``target_module`` names the projection inside a decoder layer (default: the architecture's)."""
        if self.layers:
            raise ValueError(f"this model already routes layers {self.config.layers}")
        targets = find_targets(self.base_model, target_module, layers)
        self.config = self.config.model_copy(update={"target_modules": [t.name for t in targets],
                                                     "layers": [t.layer for t in targets]})
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
        held = _bundle_parts(source)
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
            target_modules=[t.name for t in targets],
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
        what the routers read, for the probes and the first decision's reader. With ``layers``, the inputs of
        those layers' target projections (``target_module``, default the architecture's), routed or not: what
        their routers would read."""
        modules = ({layer.layer_index: layer for layer in self.layers} if layers is None else
                   {t.layer: self.base_model.get_submodule(t.name) for t in find_targets(self.base_model, target_module, layers)})
        captured: dict[int, list[torch.Tensor]] = {index: [] for index in modules}

        def hook(layer_index: int):
            return lambda _module, args: captured[layer_index].append(pick(args[0]))

        handles = [module.register_forward_pre_hook(hook(index)) for index, module in modules.items()]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

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

    # --------------------------------------------------------- experts (PEFT)
    def _is_conv1d(self) -> bool:
        return type(self.layers[0].base_layer).__name__ == "Conv1D"

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.config.expert.r,
            lora_alpha=self.config.expert.alpha,
            lora_dropout=self.config.expert.dropout,
            target_modules=list(self.config.target_modules),
            fan_in_fan_out=self._is_conv1d(),
            bias="none",
            task_type="CAUSAL_LM",
            base_model_name_or_path=self.config.base.name_or_path,
        )

    def _expert_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """Expert ``name``'s LoRA parameters under PEFT's on-disk keys."""
        return {
            f"{PEFT_PREFIX}{target}.{part}.weight": getattr(layer, part)[name].weight
            for target, layer in zip(self.config.target_modules, self.layers)
            for part in ("lora_A", "lora_B")
        }

    def expert_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """A copy of one expert's weights in PEFT's on-disk key format (a snapshot: it never aliases the
        live parameters, so it can restore an expert slot after something else was put there)."""
        return {key: p.detach().to("cpu", torch.float32, copy=True) for key, p in self._expert_parameters(name).items()}

    def set_expert_state(self, name: str, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Copy a PEFT-keyed LoRA state dict into expert ``name``; ``source`` names it in errors."""
        params = self._expert_parameters(name)
        if set(state) != set(params):
            missing = sorted(set(params) - set(state))[:3]
            extra = sorted(set(state) - set(params))[:3]
            raise BundleError(f"{source}: adapter does not fit this model's targets (missing e.g. {missing}, unexpected e.g. {extra})")
        for key, param in params.items():
            if state[key].shape != param.shape:
                raise BundleError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}")
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(state[key].to(param.device, param.dtype))

    def save_expert(self, name: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.peft_config().save_pretrained(str(directory))
        save_file(self.expert_state_dict(name), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})

    def load_expert(self, name: str, directory: Path) -> None:
        """Load a PEFT LoRA adapter folder into expert ``name``."""
        config_path = directory / ADAPTER_CONFIG
        if not config_path.is_file():
            raise BundleError(f"missing adapter config: {config_path}")
        try:
            adapter = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BundleError(f"{config_path}:{err.lineno}: invalid JSON: {err.msg}") from err
        for field, expected in (("r", self.config.expert.r), ("lora_alpha", self.config.expert.alpha)):
            if adapter.get(field) != expected:
                raise BundleError(f"{config_path}: field {field!r} is {adapter.get(field)!r}, the model expects {expected!r}")
        weights = _load_safetensors(directory / ADAPTER_WEIGHTS)
        self.set_expert_state(name, weights, source=str(directory / ADAPTER_WEIGHTS))

    # --------------------------------------------------------------- routers
    def router_state_dict(self) -> dict[str, torch.Tensor]:
        """Every router's weights, float32 on the CPU: a snapshot (copies), which later training leaves as it is."""
        return {
            f"{prefix}.{key}": value.detach().to("cpu", torch.float32, copy=True).contiguous()
            for prefix, router in self.named_routers().items()
            for key, value in router.state_dict().items()
        }

    def set_router_state(self, state: dict[str, torch.Tensor]) -> None:
        """Set every router from a dict shaped like ``router_state_dict()`` (the same keys, no others)."""
        routers = self.named_routers()
        expected = {f"{prefix}.{key}" for prefix, router in routers.items() for key in router.state_dict()}
        if set(state) != expected:
            raise BundleError(f"router weights do not fit this model ({self._router_description()})")
        for prefix, router in routers.items():
            router.load_state_dict({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")})

    def _router_description(self, shape: str | None = None) -> str:
        reader = ", with the first decision's reader" if self.reader is not None else ""
        return f"router shape {shape or self.config.router.shape!r}, layers {self.config.layers}{reader}"

    def load_router(self, path: Path, fold: bool = False) -> None:
        """Load ``router.safetensors``; ``fold``: it holds paper-shape routers, fold them into this model's linear ones.

        Read one layer at a time, reopening the file for each: the pages of a
        memory-mapped file stay resident while it is open, and the paper shape
        is 142 MB at d=576, which would otherwise add to the peak memory of
        every bundle load.
        """
        if not path.is_file():
            raise BundleError(f"missing file: {path}")
        routers = self.named_routers()
        # the reader is always linear: only the layers' routers can be of the paper's shape
        expected = {f"{prefix}.{key}" for prefix, router in routers.items()
                    for key in (PAPER_KEYS if fold and prefix != "reader" else router.state_dict())}
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = set(handle.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise BundleError(f"corrupt safetensors file {path}: {err}") from err
        if names != expected:
            raise BundleError(f"{path}: router weights do not fit this model "
                              f"({self._router_description('paper' if fold else None)})")
        try:
            with safe_open(str(path), framework="pt") as handle:
                for prefix, router in routers.items():
                    state = {k[len(prefix) + 1:]: handle.get_tensor(k) for k in names if k.startswith(prefix + ".")}
                    router.load_state_dict(fold_state_dict(state) if fold and prefix != "reader" else state)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise BundleError(f"{path}: {err}") from err

    # ----------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
        """Write the bundle atomically: built in a temporary folder, then swapped in."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            for name in EXPERTS:
                self.save_expert(name, tmp / name)
            save_file(self.router_state_dict(), str(tmp / ROUTER_NAME), metadata={"format": "pt"})
            for name, source in (extra_files or {}).items():
                shutil.copyfile(source, tmp / name)
            files = {
                str(f.relative_to(tmp)): _sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()
            }
            payload = {"config": self.config.model_dump(mode="json"), "provenance": provenance(), "files": files}
            write_json_atomic(tmp / CONFIG_NAME, payload)
            _swap_in(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved MoGU bundle to %s", path)
        return path


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by ``new`` so that an interruption never leaves a half bundle at ``target``."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder (it holds ``mogu_config.json``), not a base model."""
    return (Path(path) / CONFIG_NAME).is_file()


def _bundle_parts(path: str | Path) -> list[str]:
    """The parts of a bundle besides its config (router weights, expert folders) that ``path`` holds."""
    return [name for name in (ROUTER_NAME, *EXPERTS) if (Path(path) / name).exists()]


def read_config(path: Path, verify: bool = True) -> MoGUConfig:
    """Read and validate a bundle's config, checking file checksums."""
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        raise BundleError(f"{path} is not a MoGU bundle: {CONFIG_NAME} not found")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
        config = MoGUConfig.model_validate(payload["config"])
    except json.JSONDecodeError as err:
        raise BundleError(f"{config_path}:{err.lineno}: invalid JSON: {err.msg}") from err
    except (KeyError, TypeError) as err:
        raise BundleError(f"{config_path}: missing field 'config'") from err
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{config_path}: field 'config.{field}': {first['msg']}") from err
    if verify:
        for name, digest in payload.get("files", {}).items():
            file = Path(path) / name
            if not file.is_file():
                raise BundleError(f"{path}: missing file {name}")
            if _sha256(file) != digest:
                raise BundleError(f"{file}: checksum mismatch (the file is corrupt or was changed after saving)")
    return config
