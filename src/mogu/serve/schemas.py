"""OpenAI-shaped request and response models for ``/v1/chat/completions``.

Only what this server honours is accepted. Fields that OpenAI clients send
with neutral values (``presence_penalty: 0``, ``logprobs: false``, ``user``,
...) are tolerated; features that would silently change the meaning of the
answer (tools, logprobs, JSON mode, non-zero penalties) are rejected with a
400 rather than ignored. Unknown fields are errors, as in OpenAI's API.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mogu.serve.settings import RequestMode

Role = Literal["system", "developer", "user", "assistant"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``name`` and other per-message extras are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_chat(self) -> dict[str, str]:
        """The ``{"role", "content"}`` message ``mogu.model.generation`` takes (``developer`` is a system turn)."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(_Strict):
    include_usage: bool = False


class MoGUOptions(_Strict):
    """The ``mogu`` extension of the request."""

    return_gates: bool = Field(False, description="return the router weights of the routed tokens")
    top_k: int = Field(0, ge=0, description="top-k filter for sampling; 0: off")
    mode: RequestMode = Field("mogu", description="ablations: decode the routed tokens otherwise (only those the server allows)")
    min_tokens: int = Field(0, ge=0, description="EOS is ignored before this many tokens (benchmarks: fixed-length answers)")


def _neutral(name: str, value: Any, neutral: tuple[Any, ...]) -> Any:
    if value not in neutral:
        raise ValueError(f"{name} is not supported by this server")
    return value


class ChatCompletionRequest(_Strict):
    model: Optional[str] = Field(None, description="accepted for compatibility; the server has one model")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**63 - 1)
    n: Optional[int] = Field(None, ge=1)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    mogu: Optional[MoGUOptions] = None
    # Tolerated only with their neutral values.
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    logit_bias: Optional[dict[str, float]] = None
    parallel_tool_calls: Optional[bool] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    response_format: Optional[dict[str, Any]] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: Union[str, list[str], None]) -> Union[str, list[str], None]:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: Optional[float], info) -> Optional[float]:
        return _neutral(f"a non-zero {info.field_name}", value, (None, 0, 0.0))

    @field_validator("logprobs", "top_logprobs", "tool_choice")
    @classmethod
    def _no_logprobs(cls, value: Any, info) -> Any:
        return _neutral(info.field_name, value, (None, False, 0, "none"))

    @field_validator("logit_bias", "tools")
    @classmethod
    def _nothing(cls, value: Any, info) -> Any:
        if value:
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if value is not None and value.get("type") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


# ---------------------------------------------------------------- responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class MoGUReport(BaseModel):
    """Router weights of the routed tokens, each ``[w_unwill, w_glad]``."""

    routed_tokens: int
    layers: list[int] = Field(description="decoder-layer index of each routed layer")
    gates: list[list[float]] = Field(description="per routed token: the mean over layers")
    per_layer: list[list[list[float]]] = Field(description="per routed token, per layer")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: Optional[str] = None
    mogu: Optional[MoGUReport] = None


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Optional[Literal["stop", "length"]] = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None
    mogu: Optional[MoGUReport] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mogu"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
