"""Prompt tokens read once: the prefix a batch shares, and the layout that goes with it."""

from __future__ import annotations

import torch

from mogu.model import MoGUModel
from mogu.model.config import DecodingConfig
from mogu.model.generation import encode_prompts, generate
from mogu.model.kv_cache import (crop_to, decoder_inputs, prefix_first, read_shared_prefix, read_tokens,
                                 shared_prefix_length)

PROMPTS = ["How do I bake bread?", "How do I bake a cake for ten people?", "Hi"]


def test_shared_prefix_length_leaves_each_row_its_own_tokens():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]], keep=1) == 2
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3]], keep=1) == 2  # the shorter row keeps one token
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]], keep=2) == 1
    assert shared_prefix_length([[1, 2], [3, 2]], keep=0) == 0
    assert shared_prefix_length([], keep=1) == 0


def test_prefix_first_moves_the_padding_after_the_shared_prefix():
    ids = torch.tensor([[0, 0, 7, 8, 9], [7, 8, 5, 6, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out_ids, out_mask = prefix_first(ids, mask, 2)
    assert out_ids.tolist() == [[7, 8, 0, 0, 9], [7, 8, 5, 6, 4]]
    assert out_mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]


def test_the_shared_prefix_read_once_gives_the_left_padded_batch_logits(tiny_dir):
    model = MoGUModel.from_base(str(tiny_dir))
    enc = encode_prompts(model, PROMPTS, 4)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    inner = model.base_model
    with torch.no_grad():
        whole = inner(**decoder_inputs(inner, ids, mask)).logits[:, -1]
        kv_cache, laid_ids, laid_mask = read_shared_prefix(inner, ids, mask, keep=1)
        assert kv_cache is not None and kv_cache.get_seq_length() > 0
        read = inner(**decoder_inputs(inner, laid_ids[:, kv_cache.get_seq_length():], laid_mask, kv_cache)).logits[:, -1]
    assert torch.allclose(whole, read, atol=1e-5)
    alone = read_shared_prefix(inner, ids[:1], mask[:1], keep=1)  # one row shares nothing: no extra forward
    assert alone[0] is None and torch.equal(alone[1], ids[:1])


def test_generation_reads_the_shared_prefix_once(tiny_dir):
    model = MoGUModel.from_base(str(tiny_dir))
    enc = encode_prompts(model, PROMPTS, 4)
    rows = [r[m.bool()].tolist() for r, m in zip(enc["input_ids"], enc["attention_mask"])]
    shared = shared_prefix_length(rows, keep=2)
    assert shared > 0  # the chat template's opening
    widths: list[tuple[int, int]] = []
    handle = model.base_model.base_model.register_forward_pre_hook(
        lambda _m, args, kwargs: widths.append(tuple((kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                                      else args[0]).shape)), with_kwargs=True)
    try:
        generate(model, PROMPTS, DecodingConfig(max_new_tokens=3, mode="base"))
    finally:
        handle.remove()
    assert widths[0] == (1, shared)  # one row: the prefix, read once
    assert widths[1] == (len(PROMPTS), enc["input_ids"].shape[1] - shared)  # then every row's own tokens


def test_crop_to_keeps_the_first_tokens(tiny_dir):
    model = MoGUModel.from_base(str(tiny_dir))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    kv_cache = read_tokens(model.base_model, ids, torch.ones_like(ids))
    crop_to(kv_cache, 3)
    assert kv_cache.get_seq_length() == 3
    crop_to(kv_cache, 3)  # already that short: unchanged
    assert kv_cache.get_seq_length() == 3
