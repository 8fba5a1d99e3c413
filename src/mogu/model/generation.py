"""MoGU generation with one copy of the weights and a KV cache.

The first ``m`` tokens are decoded with routing (mode ``mogu``), the rest by
the base model alone (mode ``base``: the routed layers return the stock
projection). Both phases are ordinary ``transformers`` ``generate`` calls on
the same model, so sampling, EOS, stop strings and padding behave exactly as
in the plain model. At the hand-over the base model reads the routed tokens
itself, as the released MoGU inference does (there the base model is a second
copy that re-reads prompt + routed tokens), so the rest of the answer is
exactly what the plain model writes after those tokens.

Under ``router.prompt`` "base" the base model first reads each prompt up to
its last token, and the routed phase continues from that cache: only the
positions whose output chooses a token are routed, as in training. The
hand-over keeps that part of the cache and reads the last prompt token and
the routed tokens again (a prompt read routed is read again whole). Wherever
the base model reads the prompt, the prefix all prompts of a batch share (the
chat template's system turn) is read once (``mogu.model.kv_cache``).

A routed answer does not end before its first token (``min_new_tokens`` is at
least 1 while routing): an empty turn is neither an answer nor a refusal, and a
mixture of the experts can put the end of the turn first.

Gates (``return_gates``): for routed token ``i`` and each routed layer, the
(w_unwill, w_glad) weights at the position whose output chose token ``i``
(the last prompt position for the first token).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache
from transformers.generation.streamers import BaseStreamer

from mogu.model.chat import ChatInput, format_chat
from mogu.model.config import DecodingConfig, Mode, MoGUConfig
from mogu.model.kv_cache import cache_of, crop_to, read_shared_prefix, read_tokens, with_cache
from mogu.model.layer import RoutingState
from mogu.model.router import Router

log = logging.getLogger(__name__)


class MoGUModel(Protocol):
    """What generation needs of a model: ``mogu.model.bundle.MoGUModel`` is one. A protocol, so that this
    module does not import the bundle, which imports it for ``MoGUModel.generate``."""

    base_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: MoGUConfig
    state: RoutingState
    reader: Router | None

    @property
    def device(self) -> torch.device: ...

    def mode(
        self, mode: Mode, fixed: tuple[float, float] | None = None, record: bool | None = None,
        labels: torch.Tensor | None = None,
    ) -> AbstractContextManager[None]: ...

    def reader_inputs(
        self, pick: Callable[[torch.Tensor], torch.Tensor]
    ) -> AbstractContextManager[dict[int, list[torch.Tensor]]]: ...

FinishReason = Literal["stop", "length"]
#: ``on_text(row, delta)``: called with each new piece of text of each prompt as it is decoded.
TextCallback = Callable[[int, str], None]
#: ``make(encoded prompts)``: a ``LogitsProcessor`` for the first tokens (``mogu.eval.defenses.safedecoding``).
FirstTokens = Callable[[dict[str, torch.Tensor]], LogitsProcessor]


class GenerationError(ValueError):
    """A prompt or decoding setting that cannot be generated from."""


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    routed_tokens: int
    gates: torch.Tensor | None = None  # (routed tokens, layers, 2): [..., 0] unwill, [..., 1] glad

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def context_limit(model: torch.nn.Module) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids(model: MoGUModel) -> list[int]:
    ids = model.base_model.generation_config.eos_token_id
    if ids is None:
        ids = model.tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    # Chat models end a turn with their template's end token; make sure it stops decoding.
    eos = model.tokenizer.eos_token_id
    if eos is not None and eos not in ids:
        ids.append(eos)
    return ids


def hf_generation_config(
    model: MoGUModel, decoding: DecodingConfig, max_new_tokens: int, min_new_tokens: int = 0
) -> GenerationConfig:
    """The transformers decoding settings for ``decoding`` (the same for MoGU and the plain model)."""
    sample = decoding.temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=sample,
        temperature=decoding.temperature if sample else None,
        top_p=decoding.top_p if sample else None,
        top_k=decoding.top_k if sample else None,
        eos_token_id=eos_ids(model),
        pad_token_id=model.tokenizer.pad_token_id,
        stop_strings=decoding.stop or None,
    )


def encode_prompts(model: MoGUModel, prompts: Sequence[ChatInput], max_new_tokens: int) -> dict[str, torch.Tensor]:
    """Chat-format and tokenize with left padding, checking emptiness and the context length."""
    if not prompts:
        raise GenerationError("no prompts given")
    tokenizer = model.tokenizer
    texts = [format_chat(tokenizer, p, model.config.chat_template) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    limit = context_limit(model.base_model)
    if limit is not None:
        longest = int(enc["attention_mask"].sum(-1).max())
        if longest + max_new_tokens > limit:
            raise GenerationError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's context of "
                f"{limit} tokens; shorten the prompt or lower max_new_tokens"
            )
    return {k: v.to(model.device) for k, v in enc.items()}


class _RowStreamer(BaseStreamer):
    """Feeds each row's new tokens to a ``TextDecoder``; ignores the prompt and ``end``.

    ``rows`` maps the batch rows of the current ``generate`` call to the
    caller's prompt indices (finished prompts leave the batch between phases).
    """

    def __init__(self, decoders: list[TextDecoder], on_text: TextCallback | None) -> None:
        self.decoders = decoders
        self.on_text = on_text
        self.rows: list[int] = list(range(len(decoders)))
        self.skip_prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt:  # generate first pushes the prompt
            self.skip_prompt = False
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            delta = self.decoders[row].add(token)
            if delta and self.on_text is not None:
                self.on_text(row, delta)

    def end(self) -> None:
        self.skip_prompt = True


class TextDecoder:
    """Turns one prompt's tokens into text incrementally, honouring EOS and stop strings.

    Text is released only when it cannot be the start of a stop string and does
    not end in an incomplete multi-byte character, so a stream never shows text
    that the final answer does not contain.
    """

    def __init__(self, tokenizer, eos: Sequence[int], stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.eos = set(eos)
        self.stop = list(stop)
        self.ids: list[int] = []
        self.count = 0  # tokens decoded, including a final EOS
        self.text = ""
        self.emitted = 0
        self.finish: FinishReason | None = None

    def add(self, token: int) -> str:
        if self.finish is not None:
            return ""
        self.count += 1
        if token in self.eos:
            self.finish = "stop"
            return self._release(final=True)
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            cut = self.text.find(s)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish = "stop"
                return self._release(final=True)
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final:
            if self.text.endswith("\ufffd"):
                return ""
            for s in self.stop:  # hold back a tail that could grow into a stop string
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta

    def flush(self) -> str:
        return self._release(final=True)


def read_prompt_in_base(
    model: MoGUModel, input_ids: torch.Tensor, mask: torch.Tensor, first_decision: bool = False,
    kv_cache: Cache | None = None,
) -> Cache | None:
    """Under ``router.prompt`` "base": the base model's cache of each prompt but its last token, from which
    the routed phase continues (it then routes the last prompt token onwards); otherwise None.

    ``first_decision`` (``router.first`` "reader", mode ``mogu``): the base model reads the last prompt token
    too, the reader's gates for it go to ``model.state.first`` (taken by the routed phase's first forward),
    and the cache is cut back by that token. The last column is every row's last prompt token (rows are
    padded on the left, or after a shared prefix). ``kv_cache``: the base model's cache of the first columns
    (``kv_cache.read_shared_prefix``), extended in place.
    """
    if model.config.router.prompt != "base" or input_ids.shape[1] < (1 if first_decision else 2):
        return None
    width = input_ids.shape[1] if first_decision else input_ids.shape[1] - 1
    reading = model.reader_inputs(lambda h: h[:, -1]) if first_decision else contextlib.nullcontext()
    with reading as last_token, model.mode("base"):
        kv_cache = read_tokens(model.base_model, input_ids[:, :width], mask[:, :width], kv_cache)
        if not first_decision:
            return kv_cache
        model.state.first = model.reader(torch.cat([last_token[i][0] for _, i in model.config.reader_targets()], dim=-1))
    if width < 2:
        return None  # a one-token prompt: the routed phase reads it whole
    crop_to(kv_cache, width - 1)
    return kv_cache


def _as_batch(prompts: ChatInput | Sequence[ChatInput]) -> list[ChatInput]:
    """``prompts`` as a list of prompts: a single prompt (a string, or one list of message dicts) is a batch of
    one, not a sequence of one-character prompts or of single messages."""
    if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], dict)):
        return [prompts]
    return list(prompts)


def generate(
    model: MoGUModel,
    prompts: ChatInput | Sequence[ChatInput],
    decoding: DecodingConfig | None = None,
    on_text: TextCallback | None = None,
    first_tokens: FirstTokens | None = None,
) -> list[Generation]:
    """Generate answers for a batch of chat prompts (strings or message lists), one ``Generation`` each.

    A single prompt (a string, or one message list) is a batch of one: its answer is the list's only element.
    ``first_tokens`` rewrites the scores of the first ``routed_tokens`` tokens (after the stock processors).
    """
    prompts = _as_batch(prompts)
    decoding = decoding or DecodingConfig()
    m = model.config.routed_tokens if decoding.routed_tokens is None else decoding.routed_tokens
    m = min(m, decoding.max_new_tokens)
    enc = encode_prompts(model, prompts, decoding.max_new_tokens)
    eos = eos_ids(model)
    decoders = [TextDecoder(model.tokenizer, eos, decoding.stop) for _ in prompts]
    streamer = _RowStreamer(decoders, on_text)
    tokenizer_kw = {"tokenizer": model.tokenizer} if decoding.stop else {}
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)

    input_ids, mask = enc["input_ids"], enc["attention_mask"]
    prompt_len = input_ids.shape[1]
    routing = decoding.mode != "base"
    # the base model's own cache: where it reads the prompt (no expert acts there), the prefix every row
    # shares is read once
    base_cache = None
    if not routing or model.config.router.prompt == "base":
        with model.mode("base"):
            base_cache, input_ids, mask = read_shared_prefix(model.base_model, input_ids, mask, keep=2)
        enc = {"input_ids": input_ids, "attention_mask": mask}
    gates = None
    if m > 0:
        first_decision = decoding.mode == "mogu" and model.reader is not None
        if routing:
            base_cache = read_prompt_in_base(model, input_ids, mask, first_decision, base_cache)
        trace: dict[int, list[torch.Tensor]] = {}
        model.state.trace = trace if decoding.return_gates and routing else None
        at_least = 1 if routing else 0  # a routed answer does not end before its first token (module docstring)
        routed_config = hf_generation_config(model, decoding, m, min(m, max(decoding.min_new_tokens, at_least)))
        routed_config.return_dict_in_generate = True
        # the reader's gates hold for the first routed forward only, unless they hold for every routed token
        clear_first = (model.base_model.register_forward_hook(lambda *_: setattr(model.state, "first", None))
                       if first_decision and model.config.router.later == "routers" else None)
        try:
            with model.mode(decoding.mode, decoding.fixed), torch.no_grad():
                out = model.base_model.generate(
                    input_ids=input_ids, attention_mask=mask, **with_cache(model.base_model, base_cache),
                    generation_config=routed_config, streamer=streamer, **tokenizer_kw,
                    logits_processor=LogitsProcessorList([first_tokens(enc)] if first_tokens is not None else []),
                )
        finally:
            model.state.trace = model.state.first = None
            if clear_first is not None:
                clear_first.remove()
        if trace:
            gates = torch.stack([torch.stack(trace[i], dim=1) for i in model.config.layers], dim=2).float().cpu()
        # The hand-over: the base model goes on from what it read itself: without routing everything so far,
        # with it the prompt but its last token (whose routed reading goes with the routed tokens'); a prompt
        # read routed is read again whole.
        base_cache = cache_of(model.base_model, out) if base_cache is not None or not routing else None
        if base_cache is not None and routing:
            crop_to(base_cache, prompt_len - 1)
        input_ids = out.sequences
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], input_ids.shape[1] - prompt_len)], dim=1)

    remaining = decoding.max_new_tokens - m
    alive = [i for i, d in enumerate(decoders) if d.finish is None]
    if remaining > 0 and alive:
        rows = torch.tensor(alive, device=input_ids.device)
        if len(alive) < len(decoders):
            input_ids, mask = input_ids[rows], mask[rows]
            if base_cache is not None:
                base_cache.batch_select_indices(rows)
        streamer.rows = alive
        with model.mode("base"), torch.no_grad():
            model.base_model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                **with_cache(model.base_model, base_cache),
                generation_config=hf_generation_config(model, decoding, remaining, max(0, decoding.min_new_tokens - m)),
                streamer=streamer,
                **tokenizer_kw,
            )

    results = []
    lengths = enc["attention_mask"].sum(-1).tolist()
    for row, decoder in enumerate(decoders):
        tail = decoder.flush()
        if tail and on_text is not None:
            on_text(row, tail)
        routed = min(m, decoder.count)
        results.append(
            Generation(
                text=decoder.text,
                token_ids=list(decoder.ids),
                finish_reason=decoder.finish or "length",
                prompt_tokens=int(lengths[row]),
                routed_tokens=routed,
                gates=gates[row, :routed] if gates is not None else None,
            )
        )
    return results


def stream(
    model: MoGUModel, prompt: ChatInput, decoding: DecodingConfig | None = None
) -> Iterator[str]:
    """Yield the answer to one prompt piece by piece as it is decoded.

    Generation runs in a worker thread; closing the iterator early lets the
    worker finish its current call but discards its text.
    """
    pieces: queue.Queue[tuple[str, object]] = queue.Queue()

    def work() -> None:
        try:
            generate(model, [prompt], decoding, on_text=lambda _row, delta: pieces.put(("text", delta)))
            pieces.put(("done", None))
        except BaseException as err:  # handed to the consumer, which re-raises it
            pieces.put(("error", err))

    worker = threading.Thread(target=work, daemon=True, name="mogu-stream")
    worker.start()
    while True:
        kind, payload = pieces.get()
        if kind == "text":
            yield payload  # type: ignore[misc]
        elif kind == "error":
            raise payload  # type: ignore[misc]
        else:
            return
