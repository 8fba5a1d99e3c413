"""An HTTP client for an OpenAI-compatible engine's ``/v1/completions`` (vLLM's first of all).

Every call is bounded in time (``EngineConfig``). A completion is always streamed from the engine, so that
its tokens can be relayed as they come and a client that leaves closes the engine's request too (leaving the
stream closes the connection, and vLLM aborts a request whose connection is gone).

Failures end in an ``EngineError`` carrying the HTTP status a front-end should answer with: 503 when the
engine cannot be reached, 504 when it is too slow, 502 when it answers with an error or its stream breaks off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Optional

import httpx
from transformers import PreTrainedTokenizerBase

from mogu.engine.settings import EngineConfig

log = logging.getLogger(__name__)

#: Statuses worth another try while nothing has been streamed (overload, restart, a proxy in between).
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: Text whose tokenisation the start-up check compares (words, digits, punctuation, accents, CJK, emoji).
PROBE_TEXT = "How do I bake bread? Wie backe ich Brot? 面包的做法 🍞 — 12,345.67 \"quoted\"\n\tdef f(x): return x**2"


class EngineError(RuntimeError):
    """The engine could not finish a request; ``status`` and ``code`` are what to tell the client."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class EngineMismatchError(ValueError):
    """The engine serves a model that is not the bundle's base model (another tokenizer or vocabulary)."""


@dataclass
class EngineChunk:
    """One event of the engine's stream: a piece of text, its token ids where the engine sends them."""

    text: str = ""
    token_ids: Optional[list[int]] = None
    finish_reason: Optional[str] = None
    usage: Optional[dict[str, Any]] = None


@dataclass
class EngineInfo:
    """What the start-up check found out about the engine."""

    model: str
    max_model_len: Optional[int]
    prompt_format: Literal["token_ids", "text"]
    #: vLLM's extra request fields (``return_token_ids``, ``stop_token_ids``, ``top_k``, ``min_tokens``) accepted
    extensions: bool


class _Dropped(Exception):
    """The engine's stream ended without ``[DONE]``."""


class _Retryable(Exception):
    def __init__(self, error: EngineError) -> None:
        super().__init__(str(error))
        self.error = error


def _error_detail(body: bytes) -> str:
    """The message of an error body in OpenAI's shape or vLLM's older flat one, else the text itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:300]
    return str(data)[:300]


def _status_error(status: int, detail: str) -> EngineError:
    if status == 503:
        return EngineError(503, f"the engine is unavailable (503): {detail}", "engine_unavailable")
    if status == 504:
        return EngineError(504, f"the engine timed out (504): {detail}", "engine_timeout")
    if status == 400:
        return EngineError(400, f"the engine refused the request: {detail}", "engine_rejected")
    return EngineError(502, f"the engine answered {status}: {detail}", "engine_error")


class EngineClient:
    """Talks to one engine (or a load balancer in front of several) for one event loop.

    ``info`` comes from ``check_engine``, run once at start; without it, requests use the configured model
    name and text prompts only.
    """

    def __init__(self, config: EngineConfig, info: Optional[EngineInfo] = None) -> None:
        self.config = config
        self.info = info
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(
            base_url=config.url,
            headers=headers,
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=config.max_connections),
        )

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def model(self) -> Optional[str]:
        return self.info.model if self.info else self.config.model

    async def health(self) -> dict[str, Any]:
        """The engine's state as ``/health`` reports it: ``status`` ok, error or unreachable."""
        started = time.monotonic()
        state: dict[str, Any] = {"url": self.config.url, "model": self.model}
        try:
            resp = await self._http.get("/health", timeout=self.config.health_timeout_s)
        except httpx.TimeoutException:
            return {**state, "status": "unreachable", "error": f"no answer within {self.config.health_timeout_s} s"}
        except httpx.HTTPError as err:
            return {**state, "status": "unreachable", "error": f"{type(err).__name__}: {err}"}
        state["latency_ms"] = round(1000 * (time.monotonic() - started), 1)
        if resp.status_code != 200:
            return {**state, "status": "error", "error": f"/health answered {resp.status_code}"}
        return {**state, "status": "ok"}

    async def _json(self, path: str, body: Optional[dict[str, Any]] = None) -> tuple[int, Any]:
        """One short request (GET without a body); the status and the decoded body (None if not JSON)."""
        if body is None:
            resp = await self._http.get(path)
        else:
            resp = await self._http.post(path, json=body)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, None

    async def stream_completion(self, body: dict[str, Any]) -> AsyncIterator[EngineChunk]:
        """Stream one completion, retrying with back-off while nothing has been yielded.

        Closing the iterator early closes the connection, which cancels the request on the engine.
        """
        config = self.config
        body = {**body, "model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        deadline = time.monotonic() + config.total_timeout_s
        wait = config.backoff_s
        for attempt in range(config.retries + 1):
            started = False
            try:
                async with self._http.stream("POST", "/v1/completions", json=body) as resp:
                    if resp.status_code != 200:
                        error = _status_error(resp.status_code, _error_detail(await resp.aread()))
                        if resp.status_code in RETRY_STATUS:
                            raise _Retryable(error)
                        raise error
                    async for chunk in self._chunks(resp):
                        started = True
                        yield chunk
                        if time.monotonic() > deadline:
                            raise EngineError(504, f"the engine's answer took longer than {config.total_timeout_s} s",
                                              "engine_timeout")
                    return
            except _Retryable as err:
                failure = err.error
            except (httpx.HTTPError, _Dropped) as err:
                failure = self._failure(err, started)
                if started:
                    raise failure from err
            if attempt == config.retries or time.monotonic() + wait > deadline:
                raise failure
            log.warning("engine request failed (%s); retry %d of %d in %.2f s", failure, attempt + 1, config.retries,
                        wait)
            await asyncio.sleep(wait)
            wait = min(2 * wait, config.backoff_max_s)

    def _failure(self, err: Exception, started: bool) -> EngineError:
        if isinstance(err, httpx.ConnectTimeout | httpx.ConnectError):
            return EngineError(503, f"cannot reach the engine at {self.config.url}: {type(err).__name__}",
                               "engine_unavailable")
        if isinstance(err, httpx.TimeoutException):
            what = "sent nothing more" if started else "did not answer"
            return EngineError(504, f"the engine {what} within {self.config.read_timeout_s} s", "engine_timeout")
        if started:
            return EngineError(502, f"the engine's stream broke off mid-answer ({type(err).__name__})",
                               "engine_stream_broken")
        return EngineError(502, f"the engine closed the connection without an answer ({type(err).__name__})",
                           "engine_error")

    @staticmethod
    async def _chunks(resp: httpx.Response) -> AsyncIterator[EngineChunk]:
        """The server-sent events of a completion stream; raises ``_Dropped`` if it ends without ``[DONE]``."""
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError as err:
                raise EngineError(502, f"the engine sent an event that is not JSON: {data[:100]!r}",
                                  "engine_error") from err
            if "error" in event or event.get("object") == "error":
                raise EngineError(502, f"the engine failed mid-answer: {_error_detail(data.encode())}",
                                  "engine_error")
            usage = event.get("usage")
            for choice in event.get("choices") or []:
                yield EngineChunk(text=choice.get("text") or "", token_ids=choice.get("token_ids"),
                                  finish_reason=choice.get("finish_reason"), usage=usage)
                usage = None
            if usage:
                yield EngineChunk(usage=usage)
        raise _Dropped


async def check_engine(config: EngineConfig, tokenizer: PreTrainedTokenizerBase) -> EngineInfo:
    """Wait (up to ``startup_timeout_s``) for the engine, and make sure it serves the bundle's base model.

    The engine must list the model (or list exactly one when none is named), tokenise a probe text to the
    same ids as ``tokenizer`` (vLLM's ``/tokenize``) and know the tokenizer's last token (``/detokenize``).
    A tiny completion then finds out whether it takes token ids as a prompt. Raises ``EngineError`` when
    the engine cannot be reached and ``EngineMismatchError`` when its model is another one.
    """
    async with EngineClient(config) as client:
        models = await _wait_for_models(client, config)
        names = [m.get("id") for m in models if isinstance(m, dict)]
        if config.model is None and len(names) != 1:
            raise EngineMismatchError(f"the engine serves {names}; name the one to use (--engine-model)")
        name = config.model or names[0]
        if name not in names:
            raise EngineMismatchError(f"the engine does not serve {name!r}; it serves {names}")
        card = models[names.index(name)]
        client.info = EngineInfo(model=name, max_model_len=card.get("max_model_len"), prompt_format="text",
                                 extensions=False)
        await _check_tokenizer(client, name, tokenizer)
        client.info = await _probe_prompts(client, client.info, tokenizer)
        log.info("engine %s serves %s (context %s, prompts as %s)", config.url, name, client.info.max_model_len,
                 client.info.prompt_format)
        return client.info


async def _wait_for_models(client: EngineClient, config: EngineConfig) -> list[dict[str, Any]]:
    deadline = time.monotonic() + config.startup_timeout_s
    while True:
        try:
            status, body = await client._json("/v1/models")
        except httpx.HTTPError as err:
            if time.monotonic() >= deadline:
                raise EngineError(503, f"cannot reach the engine at {config.url} ({type(err).__name__}); "
                                  f"waited {config.startup_timeout_s} s", "engine_unavailable") from err
        else:
            if status == 200 and isinstance(body, dict):
                return list(body.get("data") or [])
            if status in (401, 403):
                raise EngineError(502, f"the engine refused the API key ({status})", "engine_auth")
            if time.monotonic() >= deadline:
                raise EngineError(503, f"the engine's /v1/models answered {status}", "engine_unavailable")
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


async def _check_tokenizer(client: EngineClient, name: str, tokenizer: PreTrainedTokenizerBase) -> None:
    expected = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    status, body = await client._json("/tokenize", {"model": name, "prompt": PROBE_TEXT, "add_special_tokens": False})
    if status == 404:
        log.warning("the engine has no /tokenize: its tokenizer cannot be compared with the bundle's")
        return
    if status != 200 or not isinstance(body, dict):
        raise EngineError(502, f"the engine's /tokenize answered {status}", "engine_error")
    if body.get("tokens") != expected:
        raise EngineMismatchError(
            f"the engine's model {name!r} tokenises text differently from the bundle's base model "
            f"({len(body.get('tokens') or [])} tokens against {len(expected)}): it is another model; serve the "
            "bundle's base model on the engine (scripts/engine.sh folder BASE prints its folder)")
    last = len(tokenizer) - 1
    status, body = await client._json("/detokenize", {"model": name, "tokens": [last]})
    want = tokenizer.decode([last])
    if status != 200 or not isinstance(body, dict) or body.get("prompt") != want:
        raise EngineMismatchError(
            f"the engine's model {name!r} does not know the base model's last token ({last}, {want!r}): its "
            "vocabulary differs; serve the bundle's base model on the engine")


async def _probe_prompts(client: EngineClient, info: EngineInfo, tokenizer: PreTrainedTokenizerBase) -> EngineInfo:
    """Does the engine take token ids as a prompt, and vLLM's extra fields? (One one-token completion.)"""
    fmt = client.config.prompt_format
    if fmt == "text":
        return info
    ids = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    body = {"model": info.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "return_token_ids": True}
    status, answer = await client._json("/v1/completions", body)
    if status == 200:
        return EngineInfo(model=info.model, max_model_len=info.max_model_len, prompt_format="token_ids",
                          extensions=True)
    if fmt == "token_ids" or status not in (400, 422):
        raise EngineError(502, f"the engine refused a token-id prompt ({status}): "
                          f"{_error_detail(json.dumps(answer).encode())}", "engine_error")
    log.warning("the engine does not take token ids as a prompt (%d); handing over text", status)
    return info
