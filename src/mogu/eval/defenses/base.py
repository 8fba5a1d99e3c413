"""What every defense is (``Defense``, ``ChatDefense``), and what the trained baselines share: option checking,
their cache folders, their instruction splits and the expert slot a borrowed LoRA sits in."""

from __future__ import annotations

import contextlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError

from mogu.eval.suites import Prompt
from mogu.model import MoGUModel
from mogu.model.chat import ChatInput
from mogu.model.config import DecodingConfig, StrictModel
from mogu.train.data import Record

SLOT = "glad"  # the expert slot that holds a borrowed LoRA while it is in use
#: ``options[name]``: the keyword options of defense ``name`` (``make_defense``).
Options = Mapping[str, Mapping[str, Any]]
T = TypeVar("T")
Config = TypeVar("Config", bound=StrictModel)


class DefenseError(ValueError):
    """An unknown defense, bad options, or a defense that does not fit the target."""


class Defense(ABC):
    """Answers prompts; ``prepare`` trains or loads what the defense needs (once)."""

    name: str
    needs_bundle: bool = False

    def __init__(self, model: MoGUModel) -> None:
        self.model = model

    @classmethod
    def from_options(cls, model: MoGUModel, options: Options, cache_dir: Path) -> Defense:
        """The defense with its own ``options[cls.name]``; trained baselines cache their pieces under
        ``cache_dir`` (their own folder, or the option ``path``)."""
        return cls(model, **options.get(cls.name, {}))

    def prepare(self) -> None:
        """Train or load the defense's pieces; called before the first ``generate``."""

    def params(self) -> dict[str, Any]:
        """The settings that decide the answers (saved with the generations; a change invalidates them)."""
        return {}

    def info(self) -> dict[str, Any]:
        """What preparation found (chosen layer, selected step, ...), for the report."""
        return {}

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], decoding: DecodingConfig) -> list[str]: ...


class ChatDefense(Defense):
    """A defense that only changes the chat shown to the model and the decoding mode."""

    update: dict[str, Any] = {"mode": "base"}

    def chat(self, prompt: Prompt) -> ChatInput:
        return prompt.text

    def generate(self, prompts: Sequence[Prompt], decoding: DecodingConfig) -> list[str]:
        if not prompts:
            return []
        results = self.model.generate([self.chat(p) for p in prompts], decoding.model_copy(update=self.update))
        return [r.text for r in results]


def validated(cls: type[Config], name: str, options: Mapping[str, Any]) -> Config:
    """``cls(**options)``, its first validation error as a ``DefenseError`` that names the defense."""
    try:
        return cls(**options)
    except ValidationError as err:
        first = err.errors()[0]
        raise DefenseError(f"{name}: option {'.'.join(str(p) for p in first['loc'])!r}: {first['msg']}") from err


def own_folder(name: str, options: Options, cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A trained baseline's cache folder (its option ``path``, else ``cache_dir/name``) and its other options."""
    own = dict(options.get(name, {}))
    return Path(own.pop("path", None) or cache_dir / name), own


def cache_matches(path: Path, wanted: Mapping[str, Any]) -> bool:
    """True if the JSON file ``path`` holds ``wanted``; False if it does not exist; an error if it holds something
    else (a piece trained otherwise is never overwritten)."""
    if not path.is_file():
        return False
    saved = json.loads(path.read_text(encoding="utf-8"))
    if {k: saved.get(k) for k in wanted} != dict(wanted):
        raise DefenseError(
            f"{path.parent} holds a piece trained with other settings or on another base model "
            f"(saved {({k: saved.get(k) for k in wanted})}, wanted {dict(wanted)}); delete the folder or choose another"
        )
    return True


def train_and_val(name: str, records: Sequence[Record]) -> tuple[list[Record], list[Record]]:
    """The train and val records; both must be there."""
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    if not train or not val:
        raise DefenseError(f"{name}: the instructions need train and val records; got {len(train)} train, {len(val)} val")
    return train, val


def seeded_subset(items: list[T], limit: int | None, rng: random.Random) -> list[T]:
    """At most ``limit`` of ``items`` (None: all), drawn with ``rng``, in their order."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), limit))]


@contextlib.contextmanager
def restored_expert(model: MoGUModel, slot: str = SLOT) -> Iterator[None]:
    """Whatever is put into expert ``slot`` inside, the slot holds its current weights again afterwards."""
    saved = model.expert_state_dict(slot)
    try:
        yield
    finally:
        model.set_expert_state(slot, saved)


@contextlib.contextmanager
def borrowed_expert(model: MoGUModel, state: dict[str, torch.Tensor], slot: str = SLOT) -> Iterator[None]:
    """Put a LoRA (PEFT-keyed state dict) into an expert slot for a while, then restore the slot."""
    with restored_expert(model, slot):
        model.set_expert_state(slot, state)
        yield
