"""Request validation on the event loop: API key, body size, JSON, fields, decoding settings and messages.

Each check raises an ``ApiError`` naming what is wrong, before anything is queued.
"""

from __future__ import annotations

import hmac
import json
from typing import Optional

from fastapi import Request
from pydantic import ValidationError

from mogu.model.chat import ChatTemplateError, to_messages
from mogu.model.config import DecodingConfig
from mogu.serve.errors import ApiError, validation_error
from mogu.serve.schemas import ChatCompletionRequest, MoGUOptions
from mogu.serve.settings import RequestMode, ServeConfig


async def authorize(request: Request) -> None:
    """The routes' dependency: a bearer token equal to the server's API key, if it has one."""
    api_key = request.app.state.mogu.settings.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or incorrect API key (expected 'Authorization: Bearer <key>')",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``limit`` bytes."""
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


def parse(body: bytes) -> ChatCompletionRequest:
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
        raise validation_error(err) from err
    except RecursionError as err:
        raise ApiError(400, "the request body is nested too deeply") from err


def decoding(req: ChatCompletionRequest, settings: ServeConfig) -> DecodingConfig:
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


def prompt(req: ChatCompletionRequest) -> list[dict[str, str]]:
    messages = [m.as_chat() for m in req.messages]
    try:
        return to_messages(messages)
    except ChatTemplateError as err:
        raise ApiError(400, str(err), param="messages") from err
