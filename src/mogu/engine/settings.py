"""Typed settings of the engine a MoGU front-end hands answers over to."""

from __future__ import annotations

from typing import Literal, Optional
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from mogu.model.config import StrictModel

PromptFormat = Literal["auto", "token_ids", "text"]


class EngineConfig(StrictModel):
    """Where the engine is and how long to wait for it.

    Every wait is bounded: connecting (``connect_timeout_s``), each read, the wait for the first token
    included (``read_timeout_s``), and the whole request (``total_timeout_s``). A request that has not
    streamed anything yet is tried again up to ``retries`` times, waiting ``backoff_s``, then twice as long
    each time up to ``backoff_max_s``; once the engine's tokens have reached the client, a failure ends the
    answer with an error instead (a retry could not take back what was sent).

    ``prompt_format`` "auto" hands over token ids where the engine accepts them (vLLM takes a list of ids as
    ``prompt``) and otherwise text, checked to tokenise back to the same ids.
    """

    url: str = Field(description="the engine's base URL, e.g. http://127.0.0.1:8001 (a trailing /v1 is allowed)")
    model: Optional[str] = Field(None, description="the engine's served model name (default: its only model)")
    api_key: Optional[str] = Field(None, description="sent as 'Authorization: Bearer KEY'")
    connect_timeout_s: float = Field(3.0, gt=0, description="longest wait for a connection to the engine")
    read_timeout_s: float = Field(30.0, gt=0, description="longest wait for the engine's next bytes")
    total_timeout_s: float = Field(600.0, gt=0, description="longest time one request may take, retries included")
    retries: int = Field(2, ge=0, le=10, description="further attempts for a request that has streamed nothing yet")
    backoff_s: float = Field(0.2, ge=0, description="wait before the first retry (doubling after each)")
    backoff_max_s: float = Field(2.0, ge=0, description="longest wait between two retries")
    startup_timeout_s: float = Field(60.0, ge=0, description="how long the start-up check waits for the engine")
    health_timeout_s: float = Field(2.0, gt=0, description="time limit of the engine health probe")
    prompt_format: PromptFormat = Field(
        "auto", description="'token_ids', 'text' (checked to tokenise back to the same ids), or 'auto': token ids "
        "where the engine accepts them, else text"
    )
    max_connections: int = Field(256, ge=1, description="concurrent connections to the engine")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"engine URL {url!r} must look like http://HOST:PORT")
        base = url.rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base
