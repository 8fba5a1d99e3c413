"""What the routes share: the batcher, the model's identity, the draining flag and the health report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fastapi.responses import JSONResponse

from mogu.serve.batcher import Batcher
from mogu.serve.errors import ApiError
from mogu.serve.settings import ServeConfig


def served_name(target: str) -> str:
    """The model name ``/v1/models`` reports for a ``mogu serve`` target."""
    path = Path(target)
    return path.resolve().name if path.exists() else target


@dataclass
class ServerState:
    """What the routes share: the batcher, the model's identity and the draining flag."""

    batcher: Batcher
    settings: ServeConfig
    model_name: str
    layers: list[int]
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    in_flight: int = 0

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down",
                           headers={"Connection": "close"})

    def health(self, engine_state: Optional[dict[str, Any]]) -> JSONResponse:
        """``GET /health``: 200 when serving, 503 while draining or while the engine (if any) is down."""
        status = "draining" if self.draining else "ok"
        if engine_state is not None and engine_state["status"] != "ok" and not self.draining:
            status = "engine_unavailable"
        body = {
            "status": status,
            "model": self.model_name,
            "queued": self.batcher.queued,
            "running": self.batcher.running,
            "in_flight": self.in_flight,
            "stats": self.batcher.stats.as_dict(),
        }
        if engine_state is not None:
            body["engine"] = engine_state
        return JSONResponse(body, status_code=503 if status != "ok" else 200)
