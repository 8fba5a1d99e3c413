"""``mogu serve``'s process: uvicorn in front of the app, draining gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
from types import FrameType
from typing import TYPE_CHECKING, Optional

import uvicorn

from mogu.engine import EngineClient
from mogu.serve.app import create_app
from mogu.serve.settings import ServeConfig
from mogu.serve.state import ServerState

if TYPE_CHECKING:
    from mogu.model.bundle import MoGUModel

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server that answers 503 from the moment a shutdown signal arrives.

    uvicorn itself then stops accepting connections and waits (up to
    ``timeout_graceful_shutdown``) for in-flight requests, queued ones
    included, before the app's lifespan stops the worker.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.mogu_state = state

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        self.mogu_state.draining = True
        super().handle_exit(sig, frame)


def run_server(model: MoGUModel, settings: ServeConfig, engine: Optional[EngineClient] = None) -> None:
    """Serve ``model`` with uvicorn until SIGINT/SIGTERM, then drain gracefully (``engine``: see ``create_app``)."""
    if not settings.is_loopback:
        if settings.api_key is None:
            log.warning("binding %s without --api-key: anyone who can reach this address can use the model",
                        settings.host)
        else:
            log.warning("binding %s: the API key travels in clear text; put TLS in front for other hosts", settings.host)
    app = create_app(model, settings, engine)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        log_level="info",
    )
    DrainingServer(config, app.state.mogu).run()
