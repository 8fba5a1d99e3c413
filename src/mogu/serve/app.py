"""The HTTP layer: an OpenAI-compatible chat completions API over a ``Batcher``.

Routes: ``POST /v1/chat/completions`` (streamed as server-sent events or
not), ``GET /v1/models``, ``GET /health``. Every error, including malformed
JSON and unknown routes, is answered in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

With an engine (``mogu.engine``), the worker decodes only the routed tokens
and the engine writes the rest; a streamed answer then starts once the engine
has sent its first tokens, so a request the engine cannot take still gets a
plain 502/503/504.

A request is validated (auth, body size, JSON, fields, max_tokens) on the
event loop, then queued; its prompt is tokenised and length-checked on the
worker thread (the tokenizer, like the model, is used from one thread only).
A streamed response starts only once the request's batch has started, so a
prompt that is too long still gets a plain 400 rather than a broken stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mogu.engine import Continuation, EngineClient, EngineError, routed_phase
from mogu.model.config import DecodingConfig
from mogu.model.generation import Generation, GenerationError, context_limit, eos_ids
from mogu.serve.settings import RequestMode
from mogu.model.chat import ChatInput, ChatTemplateError, format_chat, to_messages
from mogu.serve.batcher import Batcher, BatcherClosedError, CheckFn, Job, JobCancelledError, QueueFullError
from mogu.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    MoGUOptions,
    MoGUReport,
    Usage,
)
from mogu.serve.settings import ServeConfig

if TYPE_CHECKING:
    from mogu.model.bundle import MoGUModel

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5  # how often a waiting request checks whether its client is still there


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type, param=param, code=code)
        self.headers = headers


class PromptTooLongError(GenerationError):
    """The prompt is longer than the server accepts, or leaves no room for max_tokens."""


class _ClientGone(Exception):
    pass


class _JobStream(StreamingResponse):
    """A streamed answer that runs ``on_close`` however the response ends (done, error, disconnect).

    Cleanup lives here rather than in the generator's ``finally`` because a
    generator that is never started never runs its ``finally``.
    """

    def __init__(self, content: AsyncIterator[str], on_close) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=err.body).model_dump(), status_code=err.status, headers=err.headers)


def _sse(payload: Any) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


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


def served_name(target: str) -> str:
    """The model name ``/v1/models`` reports for a ``mogu serve`` target."""
    path = Path(target)
    return path.resolve().name if path.exists() else target


def make_check(model: MoGUModel, settings: ServeConfig, engine_context: Optional[int] = None) -> CheckFn:
    """The per-request prompt check run on the worker thread: template, prompt length, context room
    (the engine's context where it is shorter than the model's)."""
    limit = min((n for n in (context_limit(model.base_model), engine_context) if n is not None), default=None)
    most = settings.max_prompt_tokens

    def check(prompt: ChatInput, decoding: DecodingConfig) -> None:
        text = format_chat(model.tokenizer, prompt, model.config.chat_template)
        n = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        if most is not None and n > most:
            raise PromptTooLongError(f"the prompt is {n} tokens long; this server accepts at most {most}")
        if limit is not None and n + decoding.max_new_tokens > limit:
            raise PromptTooLongError(
                f"the prompt ({n} tokens) plus max_tokens ({decoding.max_new_tokens}) exceeds the model's context "
                f"of {limit} tokens; shorten the messages or lower max_tokens"
            )

    return check


def _decoding(req: ChatCompletionRequest, settings: ServeConfig) -> DecodingConfig:
    """The request's decoding settings, or an ``ApiError`` naming the offending field."""
    if req.n not in (None, 1):
        raise ApiError(400, f"n={req.n} is not supported: this server returns one choice per request", param="n")
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if asked is not None and asked > settings.max_tokens_limit:
        raise ApiError(400, f"{param} is {asked}; this server allows at most {settings.max_tokens_limit}", param=param)
    max_new = asked if asked is not None else min(settings.default_max_tokens, settings.max_tokens_limit)
    temperature = settings.temperature if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    if top_p == 0:  # only the most likely token survives: greedy
        temperature, top_p = 0.0, 1.0
    extra = req.mogu
    try:
        return DecodingConfig(
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=top_p,
            top_k=extra.top_k if extra else 0,
            min_new_tokens=extra.min_tokens if extra else 0,
            seed=req.seed,
            stop=req.stop_list(),
            mode=_mode(extra, settings),
            return_gates=bool(extra and extra.return_gates),
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise ApiError(400, f"invalid decoding settings: {first['msg']}", param=str(first["loc"][0]) if first["loc"] else None) from err


def _mode(extra: Optional[MoGUOptions], settings: ServeConfig) -> RequestMode:
    """The request's ``mogu.mode`` if this server allows it (the ablations switch the defence off)."""
    mode = extra.mode if extra else "mogu"
    if mode not in settings.allowed_modes:
        raise ApiError(400, f"mogu.mode {mode!r} is not allowed on this server (allowed: "
                       f"{', '.join(settings.allowed_modes)})", param="mogu.mode")
    return mode


def _prompt(req: ChatCompletionRequest) -> list[dict[str, str]]:
    messages = [m.as_chat() for m in req.messages]
    try:
        return to_messages(messages)
    except ChatTemplateError as err:
        raise ApiError(400, str(err), param="messages") from err


def _validation_error(err: ValidationError | RequestValidationError) -> ApiError:
    errors = err.errors()
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    first_loc = ".".join(str(p) for p in errors[0].get("loc", ()) if p != "body") if errors else ""
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return ApiError(400, "invalid request: " + "; ".join(parts) + more, param=first_loc or None)


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


def _job_error(err: BaseException) -> ApiError:
    if isinstance(err, PromptTooLongError):
        return ApiError(400, str(err), param="messages", code="context_length_exceeded")
    if isinstance(err, (GenerationError, ChatTemplateError, ValueError)):
        return ApiError(400, str(err), param="messages")
    if isinstance(err, JobCancelledError):
        return ApiError(499, "request cancelled", code="cancelled")
    log.error("generation failed: %r", err)
    return ApiError(500, f"generation failed: {type(err).__name__}", type="server_error")


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"request body exceeds this server's limit of {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_big
        except ValueError as err:
            raise ApiError(400, "invalid Content-Length header") from err
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> ChatCompletionRequest:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, absurd nesting
        detail = f": {err.msg} (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise ApiError(400, f"the request body is not valid JSON{detail}") from err
    if not isinstance(payload, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(payload).__name__}")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as err:
        raise _validation_error(err) from err
    except RecursionError as err:
        raise ApiError(400, "the request body is nested too deeply") from err


def _engine_error(err: EngineError) -> ApiError:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return ApiError(err.status, str(err), type=kind, code=err.code)


async def _watched(work: Any, request: Request) -> Any:
    """Await ``work`` (a coroutine); cancel it and raise ``_ClientGone`` if the client disconnects meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _next_event(events: asyncio.Queue, request: Request) -> tuple[str, Any]:
    """The job's next event; raises ``_ClientGone`` if the client disconnects meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise _ClientGone from None


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
    def generate(prompts: list[ChatInput], decoding: DecodingConfig, on_text: Any) -> list[Generation]:
        if engine is None:
            return model.generate(prompts, decoding, on_text)
        return routed_phase(model, prompts, decoding, engine_context)  # text is sent once the engine has started

    eos = eos_ids(model)
    batcher = Batcher(
        generate,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        batch_wait_s=settings.batch_wait_ms / 1000,
        check=make_check(model, settings, engine_context),
        min_retry_after_s=settings.retry_after_s,
    )
    name = settings.model_name or Path(model.config.base.source).name or "mogu"
    state = ServerState(batcher=batcher, settings=settings, model_name=name, layers=list(model.config.layers))

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

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(err.status_code, str(err.detail), type=kind, headers=getattr(err, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal server error", type="server_error"))

    async def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or incorrect API key (expected 'Authorization: Bearer <key>')",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def refuse_if_draining() -> None:
        if state.draining:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down",
                           headers={"Connection": "close"})

    @app.get("/health")
    async def health() -> JSONResponse:
        engine_state = await engine.health() if engine is not None else None
        status = "draining" if state.draining else "ok"
        if engine_state is not None and engine_state["status"] != "ok" and not state.draining:
            status = "engine_unavailable"
        body = {
            "status": status,
            "model": name,
            "queued": batcher.queued,
            "running": batcher.running,
            "in_flight": state.in_flight,
            "stats": batcher.stats.as_dict(),
        }
        if engine_state is not None:
            body["engine"] = engine_state
        return JSONResponse(body, status_code=503 if status != "ok" else 200)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=state.created)])

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        refuse_if_draining()
        req = _parse(await _read_body(request, settings.max_body_bytes))
        decoding = _decoding(req, settings)
        prompt = _prompt(req)
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

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        state.in_flight += 1
        handed_over = False
        try:
            kind, payload = await _next_event(events, request)
            if kind == "error":
                raise _job_error(payload)
            if engine is not None:
                while kind not in ("done", "error"):
                    kind, payload = await _next_event(events, request)
                if kind == "error":
                    raise _job_error(payload)
                continuation = Continuation(engine, payload, decoding, model.tokenizer, eos)
                try:
                    if not stream:
                        result = await _watched(continuation.collect(), request)
                    else:
                        first = await _watched(continuation.open(), request)
                except EngineError as err:
                    raise _engine_error(err) from err
                if stream:
                    handed_over = True
                    return _JobStream(_engine_stream(continuation, first, completion_id, created, include_usage),
                                      lambda: _close_engine_stream(continuation))
                return JSONResponse(_dump(ChatCompletion(
                    id=completion_id, created=created, model=name,
                    choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
                    usage=_usage(result), mogu=_gate_report(result, state.layers))))
            if not stream:
                while kind != "done":
                    kind, payload = await _next_event(events, request)
                    if kind == "error":
                        raise _job_error(payload)
                result: Generation = payload
                body = ChatCompletion(
                    id=completion_id,
                    created=created,
                    model=name,
                    choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
                    usage=_usage(result),
                    mogu=_gate_report(result, state.layers),
                )
                return JSONResponse(_dump(body))
            handed_over = True
            return _JobStream(_stream(events, completion_id, created, include_usage), lambda: _close_stream(job))
        except _ClientGone:
            log.info("client went away before its answer; request dropped")
            return JSONResponse({}, status_code=499)
        finally:
            if not handed_over:
                batcher.cancel(job)  # no-op once done; frees the slot or stops the forwarding otherwise
                state.in_flight -= 1

    def _close_stream(job: Job) -> None:
        if batcher.cancel(job):
            log.info("client disconnected before its answer started; dropped it from the queue")
        elif job.cancelled:
            log.info("client disconnected mid-stream; stopped forwarding its text")
        state.in_flight -= 1

    def _close_engine_stream(continuation: Continuation) -> None:
        """Cancel the engine's request of a stream that ended early (a client that left)."""
        state.in_flight -= 1
        try:
            asyncio.get_running_loop().create_task(continuation.aclose())
        except RuntimeError:  # no loop any more: the connection goes with it
            pass

    async def _engine_stream(continuation: Continuation, first: str, completion_id: str, created: int,
                             include_usage: bool) -> AsyncIterator[str]:
        """SSE chunks of an answer handed over to the engine; an engine failure ends it with an error event."""

        def chunk(delta: Delta, finish: Optional[str] = None, report: Optional[MoGUReport] = None) -> str:
            body = ChatCompletionChunk(id=completion_id, created=created, model=name,
                                       choices=[ChunkChoice(delta=delta, finish_reason=finish)], mogu=report)
            return _sse(_dump(body))

        yield chunk(Delta(role="assistant", content=first))
        try:
            async for piece in continuation.rest():
                yield chunk(Delta(content=piece))
        except EngineError as err:
            log.warning("engine failed mid-answer: %s", err)
            yield _sse(ErrorResponse(error=_engine_error(err).body).model_dump())
            yield _sse("[DONE]")
            return
        finally:
            await continuation.aclose()
        result = continuation.result()
        yield chunk(Delta(), result.finish_reason, _gate_report(result, state.layers))
        if include_usage:
            yield _sse(_dump(ChatCompletionChunk(id=completion_id, created=created, model=name, choices=[],
                                                 usage=_usage(result))))
        yield _sse("[DONE]")

    async def _stream(events: asyncio.Queue, completion_id: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        """SSE chunks for a started job, ending with ``data: [DONE]``."""

        def chunk(delta: Delta, finish: Optional[str] = None, report: Optional[MoGUReport] = None) -> str:
            body = ChatCompletionChunk(id=completion_id, created=created, model=name,
                                       choices=[ChunkChoice(delta=delta, finish_reason=finish)], mogu=report)
            return _sse(_dump(body))

        yield chunk(Delta(role="assistant", content=""))
        while True:
            kind, payload = await events.get()
            if kind == "text":
                yield chunk(Delta(content=payload))
            elif kind == "done":
                result: Generation = payload
                yield chunk(Delta(), result.finish_reason, _gate_report(result, state.layers))
                if include_usage:
                    usage = ChatCompletionChunk(id=completion_id, created=created, model=name, choices=[],
                                                usage=_usage(result))
                    yield _sse(_dump(usage))
                break
            elif kind == "error":
                yield _sse(ErrorResponse(error=_job_error(payload).body).model_dump())
                break
        yield _sse("[DONE]")

    return app


class DrainingServer(uvicorn.Server):
    """A uvicorn server that answers 503 from the moment a shutdown signal arrives.

    uvicorn itself then stops accepting connections and waits (up to
    ``timeout_graceful_shutdown``) for in-flight requests, queued ones
    included, before the app's lifespan stops the worker.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.mogu_state = state

    def handle_exit(self, sig, frame) -> None:
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
