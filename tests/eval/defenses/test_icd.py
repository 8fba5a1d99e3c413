"""``icd``: demonstrations of refusing as earlier turns."""

from __future__ import annotations

import pytest

from mogu.eval.defenses.base import DefenseError
from mogu.eval.defenses.icd import ICD_DEMOS, InContextDefense
from mogu.model.chat import format_chat


def test_icd_puts_a_refusal_before_the_prompt(model, prompts, decoding, spy):
    InContextDefense(model).generate(prompts[:1], decoding)
    (icd,), icd_decoding = spy[0]
    assert [m["role"] for m in icd] == ["user", "assistant", "user"]
    assert icd[0]["content"] == ICD_DEMOS[0][0] and icd[1]["content"] == ICD_DEMOS[0][1]
    assert icd[-1]["content"] == prompts[0].text and icd_decoding.mode == "base"
    assert format_chat(model.tokenizer, icd) != format_chat(model.tokenizer, prompts[0].text)  # another prompt


def test_icd_demos_are_request_and_refusal_pairs(model):
    for demos in ([], [("only a request",)]):
        with pytest.raises(DefenseError, match="request, refusal"):
            InContextDefense(model, demos)
