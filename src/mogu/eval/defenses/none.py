"""``none``: the base model answers the prompt as it is."""

from __future__ import annotations

from typing import Any

from mogu.eval.defenses.base import ChatDefense


class NoDefense(ChatDefense):
    name = "none"

    def params(self) -> dict[str, Any]:
        return {"mode": "base"}
