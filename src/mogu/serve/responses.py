"""The bodies of an answer: a whole ``ChatCompletion``, or server-sent ``ChatCompletionChunk`` events.

``Answer`` carries what every body and chunk of one request repeats (its id,
creation time and model name); ``JobStream`` sends the events.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from mogu.model.generation import Generation
from mogu.serve.errors import ApiError
from mogu.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    ErrorResponse,
    MoGUReport,
    Usage,
)


class JobStream(StreamingResponse):
    """A streamed answer that runs ``on_close`` however the response ends (done, error, disconnect).

    Cleanup lives here rather than in the generator's ``finally`` because a
    generator that is never started never runs its ``finally``.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse(payload: Any) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def error_event(err: ApiError) -> str:
    """The event that ends a stream which failed after its first chunk (the status is already sent)."""
    return sse(ErrorResponse(error=err.body).model_dump())


def _gate_report(result: Generation, layers: list[int]) -> Optional[MoGUReport]:
    if result.gates is None:
        return None
    gates = result.gates.double()
    return MoGUReport(
        routed_tokens=result.routed_tokens,
        layers=layers,
        gates=torch.round(gates.mean(dim=1), decimals=6).tolist(),
        per_layer=torch.round(gates, decimals=6).tolist(),
    )


def _dump(body: ChatCompletion | ChatCompletionChunk) -> dict[str, Any]:
    """OpenAI's JSON: deltas without null fields, no ``mogu`` key unless gates were asked for."""
    data = body.model_dump()
    if data.get("mogu") is None:
        data.pop("mogu", None)
    if data.get("usage") is None and isinstance(body, ChatCompletionChunk):
        data.pop("usage", None)
    for choice in data["choices"]:
        if "delta" in choice:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return data


def _usage(result: Generation) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


@dataclass(frozen=True)
class Answer:
    """One request's answer: the id, creation time and model name its body or chunks carry, and the MoGU layers."""

    id: str
    created: int
    model: str
    layers: list[int]

    @classmethod
    def new(cls, model: str, layers: list[int]) -> Answer:
        return cls(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model, layers=layers)

    def completion(self, result: Generation) -> JSONResponse:
        """The whole answer in one body."""
        return JSONResponse(_dump(ChatCompletion(
            id=self.id, created=self.created, model=self.model,
            choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=_usage(result), mogu=_gate_report(result, self.layers))))

    def chunk(self, delta: Delta, finish: Optional[str] = None, report: Optional[MoGUReport] = None) -> str:
        body = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)], mogu=report)
        return sse(_dump(body))

    def closing(self, result: Generation, include_usage: bool) -> Iterator[str]:
        """The last chunks of a finished stream: the finish reason (and gates), then the usage if asked for."""
        yield self.chunk(Delta(), result.finish_reason, _gate_report(result, self.layers))
        if include_usage:
            yield sse(_dump(ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                                usage=_usage(result))))
