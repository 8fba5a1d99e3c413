"""Tokenising (prompt, response) pairs with the model's chat template and batching them.

Loss is on response tokens only. Over-long examples are truncated, never
dropped: the response to ``max_response_tokens``, then the instruction (from
its end) until the formatted prompt fits ``max_length``. ``Tokenized.truncated``
counts them so the caller can log it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mogu.model import MoGUModel, format_chat

IGNORE = -100


@dataclass
class Pair:
    prompt: list[int]
    response: list[int]


@dataclass
class Tokenized:
    pairs: list[Pair] = field(default_factory=list)
    truncated: int = 0


def tokenize_pairs(
    model: MoGUModel, items: list[tuple[str, str]], max_length: int, max_response_tokens: int
) -> Tokenized:
    """Tokenise (instruction, response) items; the result keeps their order."""
    tok = model.tokenizer
    out = Tokenized()
    for instruction, response in items:
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


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each sequence's response tokens: shape (batch,)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_ce = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(shift_labels.shape)
    counts = (shift_labels != IGNORE).sum(-1).clamp(min=1)
    return token_ce.sum(-1) / counts


def decision_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose output chooses a response token: the last prompt token up to the second-last response token."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def gate_mask(labels: torch.Tensor, attention_mask: torch.Tensor, which: str, routed_tokens: int) -> torch.Tensor:
    """Positions under the router's gate loss (see ``RouterStageConfig.gate_positions``)."""
    if which == "all":
        return attention_mask.bool()
    mask = decision_mask(labels)
    if which == "routed":
        mask &= mask.cumsum(dim=1) <= routed_tokens
    return mask
