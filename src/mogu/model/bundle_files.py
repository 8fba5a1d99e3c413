"""A bundle on disk: its file names, atomic writing, checksums, and reading its config and weights back.

A bundle is a folder::

    mogu_config.json        MoGUConfig + provenance + sha256 of every file below
    glad/  unwill/          ordinary PEFT LoRA adapters (adapter_config.json,
                            adapter_model.safetensors), loadable on their own
                            with PeftModel.from_pretrained
    router.safetensors      the routers, keyed by decoder-layer index (and ``reader.``)
    (train_config.json, train_log.jsonl, ... written by training)

Weights are safetensors only; nothing is unpickled.

These functions deal in configs, state dicts and paths, not in models, so that ``mogu.model.bundle`` (the
model) uses them and nothing here depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mogu import __version__
from mogu.io.files import write_json_atomic
from mogu.io.provenance import provenance
from mogu.model.config import EXPERTS, ExpertConfig, MoGUConfig
from mogu.model.layer import MoGULayer
from mogu.model.router import PAPER_KEYS, Router, fold_state_dict

log = logging.getLogger(__name__)

CONFIG_NAME = "mogu_config.json"
ROUTER_NAME = "router.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

class BundleError(ValueError):
    """A bundle or adapter on disk is missing, corrupt, or does not fit the model."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BundleError(f"missing file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"corrupt safetensors file {path}: {err}") from err


def write_adapter(directory: Path, peft_config: LoraConfig, state: dict[str, torch.Tensor]) -> None:
    """One expert as an ordinary PEFT LoRA adapter folder (``adapter_config.json`` + safetensors weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(directory))
    save_file(state, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def read_adapter(directory: Path, expert: ExpertConfig) -> dict[str, torch.Tensor]:
    """The weights of a PEFT LoRA adapter folder, after checking that its shape is ``expert``'s."""
    config_path = directory / ADAPTER_CONFIG
    if not config_path.is_file():
        raise BundleError(f"missing adapter config: {config_path}")
    try:
        adapter = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BundleError(f"{config_path}:{err.lineno}: invalid JSON: {err.msg}") from err
    for field, expected in (("r", expert.r), ("lora_alpha", expert.alpha)):
        if adapter.get(field) != expected:
            raise BundleError(f"{config_path}: field {field!r} is {adapter.get(field)!r}, the model expects {expected!r}")
    return load_safetensors(directory / ADAPTER_WEIGHTS)


def read_router_file(
    path: Path, expected: dict[str, set[str]], description: str
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """(prefix, state dict) for each router of ``router.safetensors``, after checking that the file holds exactly
    the ``expected`` keys under each prefix (``description`` says what the model expects, for the error).

    Read one router at a time from one open file, so that a large (paper-shape) file is never whole in memory.
    """
    if not path.is_file():
        raise BundleError(f"missing file: {path}")
    wanted = {f"{prefix}.{key}" for prefix, keys in expected.items() for key in keys}
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            if names != wanted:
                raise BundleError(f"{path}: router weights do not fit this model ({description})")
            for prefix in expected:
                yield prefix, {k[len(prefix) + 1:]: handle.get_tensor(k) for k in names if k.startswith(prefix + ".")}
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"corrupt safetensors file {path}: {err}") from err


def write_bundle(
    path: Path,
    config: MoGUConfig,
    peft_config: LoraConfig,
    experts: dict[str, dict[str, torch.Tensor]],
    router_state: dict[str, torch.Tensor],
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a bundle atomically: built in a temporary folder, then swapped in, with the sha256 of every file
    in its config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        for name, state in experts.items():
            write_adapter(tmp / name, peft_config, state)
        save_file(router_state, str(tmp / ROUTER_NAME), metadata={"format": "pt"})
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
        files = {str(f.relative_to(tmp)): sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        payload = {"config": config.model_dump(mode="json"), "provenance": provenance(), "files": files}
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


def bundle_parts(path: str | Path) -> list[str]:
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
        version = (payload.get("provenance") or {}).get("mogu") or payload["config"].get("mogu_version", "unknown")
        raise BundleError(f"{config_path}: a bundle written by mogu {version}, which this mogu ({__version__}) cannot "
                          f"read: field 'config.{field}': {first['msg']}") from err
    if verify:
        for name, digest in payload.get("files", {}).items():
            file = Path(path) / name
            if not file.is_file():
                raise BundleError(f"{path}: missing file {name}")
            if sha256(file) != digest:
                raise BundleError(f"{file}: checksum mismatch (the file is corrupt or was changed after saving)")
    return config


class WeightFiles:
    """What ``MoGUModel`` reads and writes of its trained weights: each expert as a PEFT LoRA adapter, the routers
    as one safetensors file, and the whole bundle. Mixed into ``MoGUModel``, whose layers, routers and config
    it uses."""

    layers: list[MoGULayer]
    config: MoGUConfig
    reader: Router | None

    def named_routers(self) -> dict[str, Router]: ...

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
        """Expert ``name`` as an ordinary PEFT LoRA adapter folder."""
        write_adapter(directory, self.peft_config(), self.expert_state_dict(name))

    def load_expert(self, name: str, directory: Path) -> None:
        """Load a PEFT LoRA adapter folder into expert ``name``."""
        self.set_expert_state(name, read_adapter(directory, self.config.expert), source=str(directory / ADAPTER_WEIGHTS))

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
        """Load ``router.safetensors``; ``fold``: it holds paper-shape routers, fold them into this model's linear
        ones (the reader is always linear: only the layers' routers can be of the paper's shape)."""
        routers = self.named_routers()
        expected = {prefix: set(PAPER_KEYS if fold and prefix != "reader" else router.state_dict())
                    for prefix, router in routers.items()}
        try:
            for prefix, state in read_router_file(path, expected, self._router_description("paper" if fold else None)):
                routers[prefix].load_state_dict(fold_state_dict(state) if fold and prefix != "reader" else state)
        except RuntimeError as err:
            raise BundleError(f"{path}: {err}") from err

    def save_pretrained(self, path: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
        """Write the bundle atomically (``bundle_files.write_bundle``); ``extra_files`` are copied in by name."""
        experts = {name: self.expert_state_dict(name) for name in EXPERTS}
        return write_bundle(Path(path), self.config, self.peft_config(), experts, self.router_state_dict(), extra_files)
