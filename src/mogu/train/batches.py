"""Tokenising (prompt, response) pairs with the model's chat template and batching them.

Loss is on response tokens only. A response is an answer's opening (a plain
string, cut to ``max_response_tokens``) or a whole turn (``Turn``: it ends with
the tokenizer's end-of-turn token and is never cut, so that a model trained on
it says its refusal once and stops). Over-long examples are truncated, never
dropped: the opening to ``max_response_tokens``, then the instruction (from its
end) until the formatted prompt fits ``max_length``. ``Tokenized.truncated``
counts them so the caller can log it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

import torch
import transformers.modeling_utils

from mogu.model import MoGUModel, format_chat
from mogu.model.kv_cache import decoder_inputs, read_shared_prefix, read_tokens
from mogu.model.positions import IGNORE, decision_mask


class Turn(NamedTuple):
    """A response that is the whole answer: trained with the end-of-turn token after it."""

    text: str


@dataclass
class Pair:
    prompt: list[int]
    response: list[int]


@dataclass
class Tokenized:
    pairs: list[Pair] = field(default_factory=list)
    truncated: int = 0


def tokenize_pairs(
    model: MoGUModel, items: list[tuple[str, str | Turn]], max_length: int, max_response_tokens: int
) -> Tokenized:
    """Tokenise (instruction, response) items; the result keeps their order."""
    tok = model.tokenizer
    out = Tokenized()
    for instruction, response in items:
        cut = False
        if isinstance(response, Turn):
            if tok.eos_token_id is None:
                raise ValueError(f"{model.config.base.source}: the tokenizer has no end-of-turn (eos) token to end a "
                                 "trained refusal with")
            response_ids = tok(response.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        else:
            response_ids = tok(response, add_special_tokens=False)["input_ids"]
            cut = len(response_ids) > max_response_tokens
            response_ids = response_ids[:max_response_tokens]
        prompt_ids = tok(format_chat(tok, instruction, model.config.chat_template), add_special_tokens=False)["input_ids"]
        overflow = len(prompt_ids) + len(response_ids) - max_length
        if overflow > 0:
            instr_ids = tok(instruction, add_special_tokens=False)["input_ids"]
            keep = max(1, len(instr_ids) - overflow - 2)
            shorter = tok.decode(instr_ids[:keep], skip_special_tokens=True)
            prompt_ids = tok(format_chat(tok, shorter, model.config.chat_template), add_special_tokens=False)["input_ids"]
            prompt_ids = prompt_ids[-(max_length - len(response_ids)) :]
            cut = True
        out.truncated += cut
        out.pairs.append(Pair(prompt_ids, response_ids))
    return out


def collate(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (prompt and padding masked)."""
    width = max(len(p.prompt) + len(p.response) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for row, p in enumerate(pairs):
        seq = p.prompt + p.response
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(p.prompt) : len(seq)] = torch.tensor(p.response)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def training_batch(model: MoGUModel, pairs: list[Pair]) -> dict[str, Any]:
    """``collate``'s batch on the model's device, ready for a forward whose loss is on the responses.

    Under ``router.prompt`` "base" no expert acts on a prompt before its last token, so nothing there depends
    on what is trained: the base model reads those tokens first, without gradients (once per distinct prompt,
    and the prefix all prompts share once for the batch), and the batch holds the rest, the last prompt token
    and the response (right-padded), with that cache, its attention mask covering both. The loss and its
    gradients are those of the whole sequences, at a fraction of the cost.
    """
    pad = model.tokenizer.pad_token_id
    if model.config.router.prompt != "base":
        return {k: v.to(model.device) for k, v in collate(pairs, pad).items()}
    index: dict[tuple[int, ...], int] = {}
    rows = [index.setdefault(tuple(p.prompt[:-1]), len(index)) for p in pairs]
    width = max(len(head) for head in index)
    ids = torch.full((len(index), width), pad, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for row, head in enumerate(index):  # left-padded
        ids[row, width - len(head) :], mask[row, width - len(head) :] = torch.tensor(head, dtype=torch.long), 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    kv_cache = None
    if width:
        with model.mode("base"):
            kv_cache, ids, mask = read_shared_prefix(model.base_model, ids, mask, keep=1)
            kv_cache = read_tokens(model.base_model, ids, mask, kv_cache)
        if len(index) < len(pairs):  # a prompt met again (an expert's wanted and unwanted response)
            selected = torch.tensor(rows, device=model.device)
            kv_cache.batch_select_indices(selected)
            mask = mask[selected]
    tail = {k: v.to(model.device) for k, v in collate([Pair(p.prompt[-1:], p.response) for p in pairs], pad).items()}
    return {**decoder_inputs(model.base_model, tail["input_ids"], torch.cat([mask, tail["attention_mask"]], dim=1),
                             kv_cache), "labels": tail["labels"]}


def gate_mask(labels: torch.Tensor, attention_mask: torch.Tensor, prompt: str) -> torch.Tensor:
    """Positions under the router's gate loss: every position when the prompt is routed (``router.prompt``
    "routed", as the released code), else the decision positions, whose output chooses a response token (the
    prompt's gates are never used when the base model reads it)."""
    return attention_mask.bool() if prompt == "routed" else decision_mask(labels)


@cache
def _keeps_logits_by_mask(model_class: type) -> bool:
    """Whether ``model_class.forward`` computes logits only where a (batch, seq) boolean ``logits_to_keep``
    says (transformers >= 5 has ``slice_logits_to_keep``; older ones and some remote code do not)."""
    return hasattr(transformers.modeling_utils, "slice_logits_to_keep") and (
        "logits_to_keep" in inspect.signature(model_class.forward).parameters)


def response_ce(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over each sequence's response tokens, shape (batch,).

    ``batch`` is ``training_batch``'s (or ``collate``'s, on the model's device); ``model`` a
    ``MoGUModel``, a PEFT model or a plain transformers model. Where the model
    supports it, the vocabulary projection runs only at the positions that
    predict a response token (on the default model it holds 28M of the 135M
    parameters).
    """
    labels = batch["labels"]
    keep = decision_mask(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inner = model.base_model if isinstance(model, MoGUModel) else getattr(model, "get_base_model", lambda: model)()
    if _keeps_logits_by_mask(type(inner)):
        inputs["logits_to_keep"] = keep
    logits = model(**inputs).logits
    if logits.dim() == 3:  # all positions came back
        logits = logits[keep]
    token_ce = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="none")
    rows = keep.nonzero()[:, 0]
    totals = torch.zeros(labels.shape[0], dtype=token_ce.dtype, device=token_ce.device).index_add(0, rows, token_ce)
    return totals / keep.sum(-1).clamp(min=1)


def mean_response_ce(model: MoGUModel, pairs: list[Pair], mode: str, batch_size: int = 16) -> float:
    """``response_ce`` averaged over ``pairs`` in routing mode ``mode``, without gradients."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = training_batch(model, pairs[start : start + batch_size])
            with model.mode(mode, labels=batch["labels"]):
                total += float(response_ce(model, batch).sum())
    return total / max(1, len(pairs))
