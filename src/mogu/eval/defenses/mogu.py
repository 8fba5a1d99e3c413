"""``mogu``: the bundle as trained; ``mogu-fixed``: the bundle with the router ablated (constant gates)."""

from __future__ import annotations

from typing import Any

from mogu.eval.defenses.base import ChatDefense
from mogu.model import MoGUModel


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


class MoGUFixed(ChatDefense):
    """The bundle with the router replaced by constant gates (w_unwill, w_glad)."""

    name = "mogu-fixed"
    needs_bundle = True

    def __init__(self, model: MoGUModel, w_unwill: float = 0.5, w_glad: float = 0.5) -> None:
        super().__init__(model)
        self.update = {"mode": "fixed", "fixed": (float(w_unwill), float(w_glad))}

    def params(self) -> dict[str, Any]:
        return {"mode": "fixed", "fixed": list(self.update["fixed"]), "routed_tokens": self.model.config.routed_tokens}
