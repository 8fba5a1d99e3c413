"""``POST /v1/chat/completions``: validate, queue, then answer whole or as server-sent events.

A request is validated (body size, JSON, fields, max_tokens) on the event
loop, then queued; its prompt is tokenised and length-checked on the worker
thread. A streamed response starts only once the request's batch has started,
so a prompt that is too long still gets a plain 400 rather than a broken stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from mogu.model.generation import Generation
from mogu.serve import parsing
from mogu.serve.batcher import BatcherClosedError, Job, QueueFullError
from mogu.serve.continuation import Handover
from mogu.serve.disconnect import ClientGone, next_event
from mogu.serve.errors import ApiError, job_error
from mogu.serve.responses import Answer, JobStream, error_event, sse
from mogu.serve.schemas import Delta
from mogu.serve.state import ServerState

log = logging.getLogger(__name__)


@dataclass
class ChatCompletions:
    """The chat completions route over the server's batcher, handing the answers to ``handover`` when there is an engine."""

    state: ServerState
    handover: Optional[Handover] = None

    async def respond(self, request: Request) -> JSONResponse | JobStream:
        state, settings, batcher = self.state, self.state.settings, self.state.batcher
        state.refuse_if_draining()
        req = parsing.parse(await parsing.read_body(request, settings.max_body_bytes))
        decoding = parsing.decoding(req, settings)
        prompt = parsing.prompt(req)
        stream = bool(req.stream)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def listener(kind: str, payload: Any) -> None:  # called on the worker thread
            if kind == "text" and not stream:
                return
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, payload))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        try:
            job = batcher.submit(prompt, decoding, listener)
        except QueueFullError as err:
            raise ApiError(429, "the server is busy: too many queued requests; retry later", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(err.retry_after)}) from err
        except BatcherClosedError as err:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down") from err

        answer = Answer.new(state.model_name, state.layers)
        state.in_flight += 1
        handed_over = False
        try:
            kind, payload = await next_event(events, request)
            if kind == "error":
                raise job_error(payload)
            if self.handover is not None:
                while kind not in ("done", "error"):
                    kind, payload = await next_event(events, request)
                if kind == "error":
                    raise job_error(payload)
                response = await self.handover.answer(payload, decoding, request, answer, stream, include_usage)
                handed_over = stream
                return response
            if not stream:
                while kind != "done":
                    kind, payload = await next_event(events, request)
                    if kind == "error":
                        raise job_error(payload)
                return answer.completion(payload)
            handed_over = True
            return JobStream(_stream(events, answer, include_usage), lambda: self._close(job))
        except ClientGone:
            log.info("client went away before its answer; request dropped")
            return JSONResponse({}, status_code=499)
        finally:
            if not handed_over:
                batcher.cancel(job)  # no-op once done; frees the slot or stops the forwarding otherwise
                state.in_flight -= 1

    def _close(self, job: Job) -> None:
        if self.state.batcher.cancel(job):
            log.info("client disconnected before its answer started; dropped it from the queue")
        elif job.cancelled:
            log.info("client disconnected mid-stream; stopped forwarding its text")
        self.state.in_flight -= 1


async def _stream(events: asyncio.Queue[tuple[str, Any]], answer: Answer, include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks for a started job, ending with ``data: [DONE]``."""
    yield answer.chunk(Delta(role="assistant", content=""))
    while True:
        kind, payload = await events.get()
        if kind == "text":
            yield answer.chunk(Delta(content=payload))
        elif kind == "done":
            result: Generation = payload
            for chunk in answer.closing(result, include_usage):
                yield chunk
            break
        elif kind == "error":
            yield error_event(job_error(payload))
            break
    yield sse("[DONE]")
