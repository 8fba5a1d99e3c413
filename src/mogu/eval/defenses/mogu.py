"""``mogu``: the bundle as trained; ``mogu@SHIFT``: the bundle with its routers moved towards the glad expert;
``mogu-fixed``: the bundle with the router ablated (constant gates)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mogu.eval.defenses.base import ChatDefense, DefenseError
from mogu.eval.suites import Prompt
from mogu.model import MoGUModel
from mogu.model.config import DecodingConfig
from mogu.train.calibrate import shift_routers

SHIFTED_PREFIX = "mogu@"


def is_trained(model: MoGUModel) -> bool:
    """Whether the model carries trained experts (a fresh MoGU model's LoRA B matrices are zero)."""
    return any(bool(weight.abs().sum() > 0) for name in ("glad", "unwill")
               for key, weight in model.expert_state_dict(name).items() if ".lora_B." in key)


class MoGUDefense(ChatDefense):
    name = "mogu"
    needs_bundle = True
    update = {"mode": "mogu"}

    def params(self) -> dict[str, Any]:
        return {"mode": "mogu", "routed_tokens": self.model.config.routed_tokens}


def shifted_name(shift: float) -> str:
    """``mogu@+0.5``, ``mogu@-1``: the name of the ``mogu`` defense at a router shift."""
    return f"{SHIFTED_PREFIX}{float(shift):+g}"


def router_shift(name: str) -> float | None:
    """The shift a ``mogu@SHIFT`` name asks for (None for any other name)."""
    if not name.startswith(SHIFTED_PREFIX):
        return None
    try:
        shift = float(name[len(SHIFTED_PREFIX):])
    except ValueError:
        shift = math.nan
    if not math.isfinite(shift):
        raise DefenseError(f"defense {name!r}: expected mogu@SHIFT with a finite number, e.g. mogu@+0.5")
    return shift


class ShiftedMoGU(MoGUDefense):
    """The bundle answering with every router (the first decision's reader too) moved towards the glad expert
    by ``shift`` logits, as ``mogu.train.calibrate.shift_routers`` moves them; negative shifts move them
    towards the unwilling expert. The routers are put back exactly after each batch, also on error."""

    def __init__(self, model: MoGUModel, shift: float) -> None:
        super().__init__(model)
        self.shift = float(shift)
        self.name = shifted_name(self.shift)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "router_shift": self.shift}

    def generate(self, prompts: Sequence[Prompt], decoding: DecodingConfig) -> list[str]:
        saved = self.model.router_state_dict()
        shift_routers(self.model, self.shift)
        try:
            return super().generate(prompts, decoding)
        finally:
            self.model.set_router_state(saved)


class MoGUFixed(ChatDefense):
    """The bundle with the router replaced by constant gates (w_unwill, w_glad)."""

    name = "mogu-fixed"
    needs_bundle = True

    def __init__(self, model: MoGUModel, w_unwill: float = 0.5, w_glad: float = 0.5) -> None:
        super().__init__(model)
        self.update = {"mode": "fixed", "fixed": (float(w_unwill), float(w_glad))}

    def params(self) -> dict[str, Any]:
        return {"mode": "fixed", "fixed": list(self.update["fixed"]), "routed_tokens": self.model.config.routed_tokens}
