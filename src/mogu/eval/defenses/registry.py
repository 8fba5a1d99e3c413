"""Defenses by name: ``parse_defenses`` checks a list of names, ``make_defense`` builds one with its options."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mogu.eval.defenses.base import Defense, DefenseError
from mogu.eval.defenses.detect_input import InputDetector
from mogu.eval.defenses.icd import InContextDefense
from mogu.eval.defenses.mogu import MoGUDefense, MoGUFixed
from mogu.eval.defenses.none import NoDefense
from mogu.eval.defenses.safedecoding import SafeDecoding
from mogu.eval.defenses.self_reminder import SelfReminder
from mogu.eval.defenses.sft import SFTDefense
from mogu.model import MoGUModel

#: Every defense by name, in the order reports list them.
DEFENSE_CLASSES: dict[str, type[Defense]] = {cls.name: cls for cls in (
    NoDefense, SelfReminder, InContextDefense, SFTDefense, SafeDecoding, InputDetector, MoGUFixed, MoGUDefense,
)}
DEFENSES: tuple[str, ...] = tuple(DEFENSE_CLASSES)


def parse_defenses(spec: str | Sequence[str]) -> list[str]:
    """``none,mogu,...`` (or a list) -> distinct known names, in order."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in DEFENSES]
    if unknown or not names:
        raise DefenseError(f"unknown defense(s) {unknown}; choose from {list(DEFENSES)}" if unknown else "no defense given")
    if len(set(names)) != len(names):
        raise DefenseError(f"defense listed twice in {names}")
    return names


def make_defense(
    name: str, model: MoGUModel, *, bundle: bool = True, cache_dir: str | Path = "defenses",
    options: dict[str, dict[str, Any]] | None = None,
) -> Defense:
    """A defense by name. ``options`` maps defense names to keyword options (safedecoding's expert is
    configured under ``sft``); trained pieces are cached under ``cache_dir/NAME`` (or ``path=``)."""
    options = options or {}
    unknown = sorted(set(options) - set(DEFENSES))
    if unknown:
        raise DefenseError(f"options for unknown defense(s) {unknown}; defenses are {list(DEFENSES)}")
    if name not in DEFENSES:
        raise DefenseError(f"unknown defense {name!r}; choose from {list(DEFENSES)}")
    try:
        defense = DEFENSE_CLASSES[name].from_options(model, options, Path(cache_dir))
    except TypeError as err:
        raise DefenseError(f"{name}: bad options {sorted(options.get(name, {}))}: {err}") from err
    if defense.needs_bundle and not bundle:
        raise DefenseError(
            f"defense {name!r} needs a trained MoGU bundle as the target (a folder with mogu_config.json); "
            "the target is a base model. Train one with `mogu train`, or drop this defense."
        )
    return defense
