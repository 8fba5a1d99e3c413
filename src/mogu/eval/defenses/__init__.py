"""Defenses: who answers a prompt. MoGU and the baselines of the paper, on one loaded model.

Every defense has a ``name`` and ``generate(prompts, decoding) -> list[str]``
(one answer per prompt, in order). All of them run on the same ``MoGUModel``
(one copy of the weights): the baselines use its base mode, and the LoRA the
SFT baseline needs is swapped into the model's glad expert slot only while it
is used (the bundle's own expert is put back afterwards). One module a defense:

==============  ================  =============================================================
none            ``none``          the base model (mode ``base``)
self-reminder   ``self_reminder`` safety system prompt + reminder after the request (Xie et al. 2023)
icd             ``icd``           one harmful request with a refusal as an earlier turn (Wei et al. 2023)
sft             ``sft``           a LoRA fine-tuned with plain CE on the seed train split:
                                  harmful -> refusal, benign and borderline -> the base model's answer
safedecoding    ``safedecoding``  base vs the SFT LoRA as safety expert over the first ``m`` tokens
                                  (Xu et al. 2024), then the base model
detect-input    ``detect_input``  a logistic-regression probe on the base model's last-token hidden
                                  state; harmful -> a fixed refusal, else the base model answers
mogu-fixed      ``mogu``          the bundle with both gates fixed at (0.5, 0.5): the router ablated
mogu            ``mogu``          the bundle (mode ``mogu``)
mogu@SHIFT      ``mogu``          the bundle with its routers moved SHIFT logits towards the glad expert
==============  ================  =============================================================

``base`` holds the ``Defense`` interface and what the trained baselines share; ``registry`` the names.
Trained pieces (the SFT adapter, the probe) are cached in a folder per defense
and reused when their config and base model match; a folder holding a piece
trained otherwise is an error, never overwritten.
"""

from mogu.eval.defenses.base import ChatDefense, Defense, DefenseError
from mogu.eval.defenses.mogu import is_trained
from mogu.eval.defenses.registry import (
    DEFENSES,
    make_defense,
    parse_defenses,
    with_mogu_shifts,
)

__all__ = ["DEFENSES", "ChatDefense", "Defense", "DefenseError", "is_trained", "make_defense", "parse_defenses", "with_mogu_shifts"]
