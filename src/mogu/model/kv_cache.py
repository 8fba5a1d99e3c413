"""KV caches of prompt tokens: reading tokens once, and the prefix every prompt of a batch shares.

Every chat prompt of a batch starts with the same tokens: the template's system turn and the opening of
the user turn (24 of the default model's 54 prompt tokens on average over the packaged instructions). Where the base model reads the
prompt (no expert acts there), those tokens give the same keys and values in every row, so they are read
once and the cache is repeated over the batch. The rows are then laid out as [shared prefix][padding][own
tokens]: the attention mask and the position ids derived from it make that the same computation as left
padding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of rows padded on the left (or after a shared prefix), as ``generate`` derives them from
    the attention mask (padding positions are never attended to)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    """The argument names of the model class's forward (inspected once per class: generation is a hot path)."""
    return frozenset(inspect.signature(model_class.forward).parameters)


def _cache_keyword(model_class: type) -> str:
    """The name of the KV cache in this model's forward arguments and outputs.

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name still works until 6.0, with a
    deprecation warning on every call); older releases and remote-code models only know ``past_key_values``.
    """
    return "cache" if "cache" in _forward_parameters(model_class) else "past_key_values"


def with_cache(model: torch.nn.Module, kv_cache: Any) -> dict[str, Any]:
    """``{name: kv_cache}`` to pass to ``model``'s forward or ``generate`` under the name it expects."""
    return {_cache_keyword(type(model)): kv_cache}


def cache_of(model: torch.nn.Module, output: Any) -> Any:
    """The KV cache in an output of ``model``'s forward or ``generate``."""
    return getattr(output, _cache_keyword(type(model)))


def decoder_inputs(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   kv_cache: Cache | None = None) -> dict[str, Any]:
    """Arguments of a forward of ``model``'s decoder stack (``model.base_model``, the stack under the
    language-model head) over ``input_ids`` after ``kv_cache``; ``attention_mask`` covers the cached tokens too,
    and the position ids follow from it."""
    decoder = model.base_model
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True,
                              **with_cache(decoder, kv_cache)}
    if "position_ids" in _forward_parameters(type(decoder)):
        inputs["position_ids"] = position_ids(attention_mask)[:, attention_mask.shape[1] - input_ids.shape[1]:]
    return inputs


def read_tokens(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                kv_cache: Cache | None = None) -> Cache:
    """The cache after ``model``'s decoder stack reads the columns of ``input_ids`` that ``kv_cache`` (extended in
    place) does not hold yet, without gradients; the vocabulary projection is not run. The caller chooses the
    mode they are read in."""
    unread = input_ids[:, 0 if kv_cache is None else kv_cache.get_seq_length():]
    with torch.no_grad():
        return cache_of(model.base_model, model.base_model(**decoder_inputs(model, unread, attention_mask, kv_cache)))


def read_prefix(model: PreTrainedModel, prefix: torch.Tensor, rows: int) -> Cache:
    """The cache of one row of tokens (1, length), read once and repeated for ``rows`` rows."""
    kv_cache = read_tokens(model, prefix, torch.ones_like(prefix))
    kv_cache.batch_repeat_interleave(rows)
    return kv_cache


def shared_prefix_length(rows: Sequence[Sequence[int]], keep: int) -> int:
    """How many tokens every row starts with, leaving at least ``keep`` tokens of each row after them."""
    limit = min((len(row) for row in rows), default=0) - keep
    first = rows[0] if rows else ()
    length = 0
    while length < limit and all(row[length] == first[length] for row in rows):
        length += 1
    return length


def prefix_first(input_ids: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows that share their first ``length`` tokens, laid out as [prefix][padding][the rest]."""
    ids, out_mask = input_ids.clone(), mask.clone()
    for row, pad in enumerate((mask == 0).sum(-1).tolist()):
        if pad:
            ids[row, :length] = input_ids[row, pad : pad + length]
            ids[row, length : length + pad] = input_ids[row, :pad]
            out_mask[row, :length], out_mask[row, length : length + pad] = 1, 0
    return ids, out_mask


def read_shared_prefix(model: PreTrainedModel, input_ids: torch.Tensor, mask: torch.Tensor, keep: int,
                       ) -> tuple[Cache | None, torch.Tensor, torch.Tensor]:
    """For a left-padded batch: the cache of the prefix its rows share (read once, repeated over the rows;
    None where they share none, or for a single row, where it would only add a forward) and the rows laid out
    for it (``prefix_first``), each keeping at least ``keep`` tokens of its own. The caller chooses the mode
    the prefix is read in."""
    rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, mask)]
    length = shared_prefix_length(rows, keep) if len(rows) > 1 else 0
    if length == 0:
        return None, input_ids, mask
    return (read_prefix(model, input_ids.new_tensor([rows[0][:length]]), len(rows)),
            *prefix_first(input_ids, mask, length))


def crop_to(kv_cache: Cache, length: int) -> None:
    """Cut ``kv_cache`` back to its first ``length`` tokens."""
    extra = kv_cache.get_seq_length() - length
    if extra > 0:
        kv_cache.crop(-extra)  # negative: that many tokens off the end (transformers 4 and 5 alike)
