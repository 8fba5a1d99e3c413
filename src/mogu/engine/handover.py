"""The faithful hand-over with the base model's part on an engine.

``routed_phase`` decodes the routed tokens in process (batched, as ``mogu.model.generation`` does), and a
``Continuation`` sends prompt + routed tokens to the engine, which re-reads them from scratch as the
faithful hand-over's base model does, and decodes the rest. The engine's token ids and the routed ones pass
through one ``TextDecoder``, so EOS, stop strings (also one that spans the hand-over) and incomplete
characters are handled as in process, and the client sees one answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional

from mogu.model.config import DecodingConfig
from mogu.engine.client import EngineChunk, EngineClient, EngineError, EngineInfo, check_engine
from mogu.engine.settings import EngineConfig
from mogu.model.generation import Generation, GenerationError, TextDecoder, context_limit, eos_ids
from mogu.model.chat import ChatInput, format_chat

if TYPE_CHECKING:
    from mogu.model.bundle import MoGUModel


@dataclass
class RoutedStart(Generation):
    """The routed phase's answer to one prompt, with what the engine needs to go on."""

    prompt_ids: list[int] = field(default_factory=list)
    #: the answer ended within the routed phase (EOS, a stop string or max_tokens): nothing left for the engine
    done: bool = False


def routed_count(model: MoGUModel, decoding: DecodingConfig) -> int:
    """How many tokens the routed model decodes under ``decoding``."""
    m = model.config.routed_tokens if decoding.routed_tokens is None else decoding.routed_tokens
    return min(m, decoding.max_new_tokens)


def prompt_ids(model: MoGUModel, prompt: ChatInput) -> list[int]:
    """The prompt's token ids, chat-formatted as ``mogu.model.generation`` formats them."""
    text = format_chat(model.tokenizer, prompt, model.config.chat_template)
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def routed_phase(
    model: MoGUModel, prompts: Sequence[ChatInput], decoding: DecodingConfig, context: Optional[int] = None
) -> list[RoutedStart]:
    """Decode the routed tokens of a batch of prompts in process; the engine writes the rest.

    ``context``: the engine's context length, when shorter than the model's (prompt + max_tokens must fit).
    """
    prompts = list(prompts)
    limits = [n for n in (context_limit(model.base_model), context) if n is not None]
    ids = [prompt_ids(model, p) for p in prompts]
    for row in ids:
        if limits and len(row) + decoding.max_new_tokens > min(limits):
            raise GenerationError(f"prompt of {len(row)} tokens + max_new_tokens {decoding.max_new_tokens} exceeds "
                                  f"the context of {min(limits)} tokens; shorten the prompt or lower max_new_tokens")
    m = routed_count(model, decoding)
    if m == 0:
        return [RoutedStart(text="", token_ids=[], finish_reason="length", prompt_tokens=len(row), routed_tokens=0,
                            prompt_ids=row) for row in ids]
    routed = decoding.model_copy(update={"max_new_tokens": m, "min_new_tokens": min(decoding.min_new_tokens, m)})
    starts = []
    for result, row in zip(model.generate(prompts, routed), ids):
        values = {f.name: getattr(result, f.name) for f in fields(Generation)}
        done = result.finish_reason == "stop" or m >= decoding.max_new_tokens
        starts.append(RoutedStart(**values, prompt_ids=row, done=done))
    return starts


class Continuation:
    """One answer: the routed tokens' text, then the engine's tokens as they come.

    ``open()`` starts the engine's part and returns the text so far; ``rest()`` yields the remaining text;
    ``result()`` is the whole ``Generation`` once ``rest()`` is exhausted. ``aclose()`` cancels the engine's
    request (a client that left). Engine failures raise ``EngineError``.
    """

    def __init__(self, client: EngineClient, start: RoutedStart, decoding: DecodingConfig, tokenizer: Any,
                 eos: Sequence[int]) -> None:
        self.client = client
        self.start = start
        self.decoding = decoding
        self.tokenizer = tokenizer
        self.decoder = TextDecoder(tokenizer, eos, decoding.stop)
        self.eos = list(eos)
        self._pending = "".join(self.decoder.add(token) for token in start.token_ids)
        self._chunks: Optional[AsyncIterator[EngineChunk]] = None
        self._ended = start.done
        self._engine_finish: Optional[str] = None
        self._engine_text = ""  # engines that send no token ids: their text, relayed as it is

    @property
    def info(self) -> EngineInfo:
        return self.client.info or EngineInfo(model=self.client.config.model or "", max_model_len=None,
                                              prompt_format="text", extensions=False)

    def request_body(self) -> dict[str, Any]:
        """The engine request for the rest of the answer: prompt + routed tokens, the remaining max_tokens."""
        d, start, info = self.decoding, self.start, self.info
        ids = start.prompt_ids + start.token_ids
        sample = d.temperature > 0
        body: dict[str, Any] = {
            "prompt": ids if info.prompt_format == "token_ids" else self._text_prompt(ids),
            "max_tokens": d.max_new_tokens - start.completion_tokens,
            "temperature": d.temperature,
            "top_p": d.top_p if sample else 1.0,
        }
        if d.seed is not None:
            body["seed"] = d.seed
        if d.stop:
            body["stop"] = list(d.stop)
        if info.extensions:
            body.update(return_token_ids=True, stop_token_ids=self.eos, skip_special_tokens=True)
            if sample and d.top_k > 0:
                body["top_k"] = d.top_k
            if d.min_new_tokens > start.completion_tokens:
                body["min_tokens"] = d.min_new_tokens - start.completion_tokens
        return body

    def _text_prompt(self, ids: list[int]) -> str:
        """The ids as text, for engines that take no token ids; refused unless it tokenises back to them."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if self.tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
            raise EngineError(500, "the prompt and routed tokens do not survive a round trip through text, and the "
                              "engine takes no token ids: the hand-over would not be exact", "handover_inexact")
        return text

    async def open(self) -> str:
        """Start the engine's part (retrying while it has sent nothing); the answer's text so far."""
        text = self._pending
        if not self._ended:
            self._chunks = self.client.stream_completion(self.request_body())
            text += await self._advance()
        return text

    async def rest(self) -> AsyncIterator[str]:
        """The rest of the answer's text, piece by piece, ending with any text held back until the end."""
        while not self._ended:
            delta = await self._advance()
            if delta:
                yield delta
        tail = self.decoder.flush()
        if tail:
            yield tail

    async def _advance(self) -> str:
        assert self._chunks is not None
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            return ""
        if chunk.finish_reason:
            self._engine_finish = chunk.finish_reason
        if chunk.token_ids is not None:
            delta = "".join(self.decoder.add(token) for token in chunk.token_ids)
        else:  # the engine applied the stop strings to its own text
            delta = chunk.text if self._engine_text else self.decoder.flush() + chunk.text
            self._engine_text += chunk.text
        if self.decoder.finish is not None:  # EOS or a stop string (maybe across the hand-over): cancel the rest
            await self.aclose()
            self._ended = True
        return delta

    async def aclose(self) -> None:
        """Stop the engine's request (closing its stream closes the connection)."""
        if self._chunks is not None:
            await self._chunks.aclose()  # type: ignore[attr-defined]

    def result(self) -> Generation:
        """The whole answer; call once ``rest()`` is exhausted."""
        start = self.start
        ids = list(self.decoder.ids)
        text = self.decoder.text
        if self._engine_text:
            text += self._engine_text
            ids += self.tokenizer(self._engine_text, add_special_tokens=False)["input_ids"]
        finish = self.decoder.finish or (start.finish_reason if start.done else self._engine_finish) or "length"
        return Generation(text=text, token_ids=ids, finish_reason="stop" if finish == "stop" else "length",
                          prompt_tokens=start.prompt_tokens, routed_tokens=start.routed_tokens, gates=start.gates)

    async def collect(self) -> Generation:
        """Run the whole continuation and return the answer (no streaming)."""
        try:
            await self.open()
            async for _ in self.rest():
                pass
        finally:
            await self.aclose()
        return self.result()


class EngineGenerator:
    """``generate`` with the base model's part on an engine, for batch use (``mogu generate --engine``).

    The engine is checked once (on the first call). Each call decodes the routed tokens of its batch in
    process, then runs the batch's continuations on the engine concurrently.
    """

    def __init__(self, model: MoGUModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.info: Optional[EngineInfo] = None

    def __call__(self, prompts: Sequence[ChatInput], decoding: Optional[DecodingConfig] = None) -> list[Generation]:
        decoding = decoding or DecodingConfig()
        if self.info is None:
            self.info = asyncio.run(check_engine(self.config, self.model.tokenizer))
        starts = routed_phase(self.model, prompts, decoding, self.info.max_model_len)
        return asyncio.run(self._continue(starts, decoding))

    async def _continue(self, starts: list[RoutedStart], decoding: DecodingConfig) -> list[Generation]:
        eos = eos_ids(self.model)
        async with EngineClient(self.config, self.info) as client:
            return list(await asyncio.gather(
                *(Continuation(client, start, decoding, self.model.tokenizer, eos).collect() for start in starts)))


def generate_with_engine(model: MoGUModel, prompts: Sequence[ChatInput], decoding: Optional[DecodingConfig],
                         config: EngineConfig) -> list[Generation]:
    """One batch through ``EngineGenerator`` (checks the engine first)."""
    return EngineGenerator(model, config)(prompts, decoding)
