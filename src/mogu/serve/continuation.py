"""The engine hand-over: once the worker has decoded the routed tokens, the engine writes the rest of the answer.

A streamed answer starts only once the engine has sent its first tokens, so
a request the engine cannot take still gets a plain 502/503/504.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from mogu.engine import Continuation, EngineClient, EngineError, RoutedStart
from mogu.model.config import DecodingConfig
from mogu.serve.disconnect import watched
from mogu.serve.errors import engine_error
from mogu.serve.responses import Answer, JobStream, error_event, sse
from mogu.serve.schemas import Delta
from mogu.serve.state import ServerState

log = logging.getLogger(__name__)


@dataclass
class Handover:
    """Hands routed generations to ``engine`` and answers with what it writes."""

    engine: EngineClient
    tokenizer: Any
    eos: list[int]
    state: ServerState

    async def answer(self, routed: RoutedStart, decoding: DecodingConfig, request: Request, answer: Answer,
                     stream: bool, include_usage: bool) -> JSONResponse | JobStream:
        """The engine's answer after ``routed``; a ``JobStream`` (which releases the request's slot) when ``stream``.

        Raises ``ApiError`` when the engine fails before the answer starts, ``ClientGone`` if the client leaves.
        """
        continuation = Continuation(self.engine, routed, decoding, self.tokenizer, self.eos)
        try:
            if not stream:
                result = await watched(continuation.collect(), request)
            else:
                first = await watched(continuation.open(), request)
        except EngineError as err:
            raise engine_error(err) from err
        if stream:
            return JobStream(_stream(continuation, first, answer, include_usage), lambda: self._close(continuation))
        return answer.completion(result)

    def _close(self, continuation: Continuation) -> None:
        """Cancel the engine's request of a stream that ended early (a client that left)."""
        self.state.in_flight -= 1
        try:
            asyncio.get_running_loop().create_task(continuation.aclose())
        except RuntimeError:  # no loop any more: the connection goes with it
            pass


async def _stream(continuation: Continuation, first: str, answer: Answer, include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks of an answer handed over to the engine; an engine failure ends it with an error event."""
    yield answer.chunk(Delta(role="assistant", content=first))
    try:
        async for piece in continuation.rest():
            yield answer.chunk(Delta(content=piece))
    except EngineError as err:
        log.warning("engine failed mid-answer: %s", err)
        yield error_event(engine_error(err))
        yield sse("[DONE]")
        return
    finally:
        await continuation.aclose()
    for chunk in answer.closing(continuation.result(), include_usage):
        yield chunk
    yield sse("[DONE]")
