"""What the batcher's worker thread runs: the per-request prompt check and the batched generation.

The tokenizer, like the model, is used from this one thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mogu.engine import routed_phase
from mogu.model.chat import ChatInput, format_chat
from mogu.model.config import DecodingConfig
from mogu.model.generation import Generation, TextCallback, context_limit
from mogu.serve.batcher import CheckFn, GenerateFn
from mogu.serve.errors import PromptTooLongError
from mogu.serve.settings import ServeConfig

if TYPE_CHECKING:
    from mogu.model.bundle import MoGUModel

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


def make_generate(model: MoGUModel, with_engine: bool, engine_context: Optional[int]) -> GenerateFn:
    """The batch generation: the whole answer, or with an engine only the routed tokens (the engine writes the rest)."""

    def generate(prompts: list[ChatInput], decoding: DecodingConfig, on_text: Optional[TextCallback]) -> list[Generation]:
        if not with_engine:
            return model.generate(prompts, decoding, on_text)
        return routed_phase(model, prompts, decoding, engine_context)  # text is sent once the engine has started

    return generate
