"""Server settings: one validated object shared by the CLI, ``create_app`` and tests."""

from __future__ import annotations

import ipaddress
from typing import Literal, Optional

from pydantic import Field

from mogu.model.config import StrictModel

#: The modes a ``mogu serve`` request may ask for (``fixed`` takes weights the API has no field for).
RequestMode = Literal["mogu", "base", "glad", "unwill"]


class ServeConfig(StrictModel):
    """How ``mogu serve`` listens, batches and limits requests.

    The limits exist so that one client cannot exhaust memory or hold the
    single generation worker for long: a bounded queue (429 when full), a
    request body cap (413), and caps on prompt and answer lengths (400).

    ``allowed_modes`` keeps the defence on: any other ``mogu.mode`` decodes the
    routed tokens without the routers (an ablation), so clients get only
    ``mogu`` unless the operator allows more. ``temperature`` applies to
    requests that give none; it defaults to greedy because the safety
    behaviour (refusal rates in docs/results.md) was measured with greedy
    decoding, as the CLI and every evaluation decode.
    """

    host: str = Field("127.0.0.1", description="interface to bind; loopback unless you mean to expose the model")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: any free port)")
    api_key: Optional[str] = Field(None, description="when set, requests need 'Authorization: Bearer <key>'")
    model_name: Optional[str] = Field(None, description="name reported by /v1/models (default: from the target)")
    max_batch_size: int = Field(8, ge=1, description="requests decoded together in one generate call")
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long the worker waits to gather a batch")
    max_queue: int = Field(64, ge=1, description="requests waiting for the worker; beyond this: 429")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body; beyond this: 413")
    max_prompt_tokens: Optional[int] = Field(None, ge=1, description="longest prompt in tokens (default: the model's context)")
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none (capped by the limit)")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="temperature when a request gives none; 0: greedy")
    allowed_modes: list[RequestMode] = Field(
        ["mogu"], min_length=1, description="mogu.mode values a request may ask for; others get a 400"
    )
    retry_after_s: int = Field(1, ge=1, description="least Retry-After sent with a 429")
    shutdown_timeout_s: float = Field(60.0, gt=0, description="how long shutdown waits for in-flight requests")
    torch_threads: Optional[int] = Field(
        None, ge=1, description="torch intra-op threads (default: torch's); 1 avoids oversubscription on shared CPUs"
    )

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
