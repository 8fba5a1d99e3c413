"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure the server answers.

``install_error_handlers`` makes FastAPI answer this way for malformed requests,
unknown routes and unexpected exceptions too.
"""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mogu.engine import EngineError
from mogu.model.chat import ChatTemplateError
from mogu.model.generation import GenerationError
from mogu.serve.batcher import JobCancelledError
from mogu.serve.schemas import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)


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


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=err.body).model_dump(), status_code=err.status, headers=err.headers)


def validation_error(err: ValidationError | RequestValidationError) -> ApiError:
    """A 400 naming up to three invalid fields, the first of them as ``param``."""
    errors = err.errors()
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    first_loc = ".".join(str(p) for p in errors[0].get("loc", ()) if p != "body") if errors else ""
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return ApiError(400, "invalid request: " + "; ".join(parts) + more, param=first_loc or None)


def job_error(err: BaseException) -> ApiError:
    """The answer to a job the worker failed: the client's fault (400), a cancellation (499) or ours (500)."""
    if isinstance(err, PromptTooLongError):
        return ApiError(400, str(err), param="messages", code="context_length_exceeded")
    if isinstance(err, (GenerationError, ChatTemplateError, ValueError)):
        return ApiError(400, str(err), param="messages")
    if isinstance(err, JobCancelledError):
        return ApiError(499, "request cancelled", code="cancelled")
    log.error("generation failed: %r", err)
    return ApiError(500, f"generation failed: {type(err).__name__}", type="server_error")


def engine_error(err: EngineError) -> ApiError:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return ApiError(err.status, str(err), type=kind, code=err.code)


async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
    return error_response(err)


async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(err))


async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    return error_response(ApiError(err.status_code, str(err.detail), type=kind, headers=getattr(err, "headers", None)))


async def _unexpected(_request: Request, err: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(ApiError(500, "internal server error", type="server_error"))


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error ``app`` raises, FastAPI's and Starlette's included, in OpenAI's shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
