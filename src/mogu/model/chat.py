"""Chat formatting through the tokenizer's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
ChatInput = Union[str, Sequence[Message]]
ROLES = ("system", "user", "assistant")


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template and none was given, or the messages are malformed."""


def to_messages(chat: ChatInput) -> list[Message]:
    """A plain string is one user turn; a list of messages is checked for shape."""
    if isinstance(chat, str):
        if not chat.strip():
            raise ChatTemplateError("empty prompt")
        return [{"role": "user", "content": chat}]
    messages = list(chat)
    if not messages:
        raise ChatTemplateError("empty message list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ChatTemplateError(
                f"message {i}: expected {{'role': one of {ROLES}, 'content': str}}, got {message!r}"
            )
    if messages[-1]["role"] == "assistant":
        raise ChatTemplateError("the last message must not be an assistant turn: there is nothing to answer")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ChatTemplateError("no non-empty user message")
    return messages


def format_chat(tokenizer: PreTrainedTokenizerBase, chat: ChatInput, chat_template: str | None = None) -> str:
    """The prompt text for ``chat``, ending where the assistant's answer begins."""
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ChatTemplateError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; pass one with chat_template= "
            "(CLI: --chat-template FILE) or use an instruction-tuned model"
        )
    return tokenizer.apply_chat_template(
        to_messages(chat), chat_template=template, tokenize=False, add_generation_prompt=True
    )
