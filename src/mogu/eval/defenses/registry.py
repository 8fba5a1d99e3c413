"""Defenses by name: ``parse_defenses`` checks a list of names, ``make_defense`` builds one with its options.
Besides ``DEFENSES``, ``mogu@SHIFT`` names the ``mogu`` defense with its routers shifted (``ShiftedMoGU``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mogu.eval.defenses.base import Defense, DefenseError
from mogu.eval.defenses.detect_input import InputDetector
from mogu.eval.defenses.icd import InContextDefense
from mogu.eval.defenses.mogu import (
    MoGUDefense,
    MoGUFixed,
    ShiftedMoGU,
    router_shift,
    shifted_name,
)
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


def _canonical(name: str) -> str:
    shift = router_shift(name)
    return name if shift is None else shifted_name(shift)


def parse_defenses(spec: str | Sequence[str]) -> list[str]:
    """``none,mogu,mogu@0.5,...`` (or a list) -> distinct known names, in order (shifts written ``mogu@+0.5``)."""
    names = [_canonical(n.strip()) for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in DEFENSES and router_shift(n) is None]
    if unknown or not names:
        raise DefenseError(f"unknown defense(s) {unknown}; choose from {list(DEFENSES)}" if unknown else "no defense given")
    if len(set(names)) != len(names):
        raise DefenseError(f"defense listed twice in {names}")
    return names


def with_mogu_shifts(names: Sequence[str], shifts: Sequence[float]) -> list[str]:
    """``names`` with ``mogu@SHIFT`` for each of ``shifts`` (by increasing shift, 0 left out: it is ``mogu``)
    right after ``mogu``, which must be among them; shifted names already there stay where they are."""
    extra = [shifted_name(s) for s in sorted(set(map(float, shifts)) - {0.0})]
    if not extra:
        return list(names)
    if "mogu" not in names:
        raise DefenseError("router shifts evaluate the mogu defense at each shift: add mogu to the defenses")
    extra = [n for n in extra if n not in names]
    at = list(names).index("mogu") + 1
    return [*names[:at], *extra, *names[at:]]


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
    shift = router_shift(name)
    if name not in DEFENSES and shift is None:
        raise DefenseError(f"unknown defense {name!r}; choose from {list(DEFENSES)} or mogu@SHIFT")
    try:
        if shift is not None:
            defense: Defense = ShiftedMoGU(model, shift)
        else:
            defense = DEFENSE_CLASSES[name].from_options(model, options, Path(cache_dir))
    except TypeError as err:
        raise DefenseError(f"{name}: bad options {sorted(options.get(name, {}))}: {err}") from err
    if defense.needs_bundle and not bundle:
        raise DefenseError(
            f"defense {name!r} needs a trained MoGU bundle as the target (a folder with mogu_config.json); "
            "the target is a base model. Train one with `mogu train`, or drop this defense."
        )
    return defense
