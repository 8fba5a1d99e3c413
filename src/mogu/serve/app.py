"""The HTTP layer: an OpenAI-compatible chat completions API over a ``Batcher``.

Routes: ``POST /v1/chat/completions`` (streamed as server-sent events or
not, see ``completions``), ``GET /v1/models``, ``GET /health``. Every error,
including malformed JSON and unknown routes, is answered in OpenAI's shape
(see ``errors``).

With an engine (``mogu.engine``), the worker decodes only the routed tokens
and the engine writes the rest (see ``continuation``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from mogu.engine import EngineClient
from mogu.model.generation import eos_ids
from mogu.serve.batcher import Batcher
from mogu.serve.completions import ChatCompletions
from mogu.serve.continuation import Handover
from mogu.serve.errors import install_error_handlers
from mogu.serve.parsing import authorize
from mogu.serve.schemas import ModelCard, ModelList
from mogu.serve.settings import ServeConfig
from mogu.serve.state import ServerState
from mogu.serve.worker import make_check, make_generate

if TYPE_CHECKING:
    from mogu.model.bundle import MoGUModel

log = logging.getLogger(__name__)


def create_app(model: MoGUModel, settings: Optional[ServeConfig] = None,
               engine: Optional[EngineClient] = None) -> FastAPI:
    """The FastAPI app serving ``model`` (a ``MoGUModel``); the batcher starts with the app's lifespan.

    ``engine`` (checked with ``mogu.engine.client.check_engine``): the worker decodes the routed tokens only,
    and the engine writes the rest of each answer.
    """
    settings = settings or ServeConfig()
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    engine_context = engine.info.max_model_len if engine is not None and engine.info is not None else None
    batcher = Batcher(
        make_generate(model, engine is not None, engine_context),
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        batch_wait_s=settings.batch_wait_ms / 1000,
        check=make_check(model, settings, engine_context),
        min_retry_after_s=settings.retry_after_s,
    )
    name = settings.model_name or Path(model.config.base.source).name or "mogu"
    state = ServerState(batcher=batcher, settings=settings, model_name=name, layers=list(model.config.layers))
    handover = Handover(engine, model.tokenizer, eos_ids(model), state) if engine is not None else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s (batches of up to %d, queue of %d)", name, settings.max_batch_size, settings.max_queue)
        yield
        state.draining = True
        await asyncio.to_thread(batcher.close, True, settings.shutdown_timeout_s)
        log.info("generation worker stopped")
        if engine is not None:
            await engine.aclose()

    app = FastAPI(title="MoGU", version="1", lifespan=lifespan)
    app.state.mogu = state
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        return state.health(await engine.health() if engine is not None else None)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=state.created)])

    app.add_api_route("/v1/chat/completions", ChatCompletions(state, handover).respond, methods=["POST"],
                      name="chat_completions", dependencies=[Depends(authorize)], response_model=None)
    return app
