"""``safedecoding`` (Xu et al. 2024): over the first ``m`` tokens, amplify what a safety expert (the SFT LoRA)
prefers over the base model; the base model writes the rest.

It decodes through the project's one generation loop (``mogu.model.generation.generate``) in mode ``base`` with
``m`` routed tokens: the loop's ``first_tokens`` hook gets a ``SafeDecodingProcessor``, which runs the expert beside
the base model (one copy of the weights, its own KV cache) and picks each of the first ``m`` tokens by
``safedecoding_scores``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from mogu.eval.defenses.base import (
    SLOT,
    Defense,
    DefenseError,
    Options,
    borrowed_expert,
)
from mogu.eval.defenses.sft import SFTDefense
from mogu.eval.suites import Prompt
from mogu.model import MoGUModel
from mogu.model.chat import ChatInput
from mogu.model.config import DecodingConfig
from mogu.model.generation import generate, read_prompt_in_base
from mogu.model.kv_cache import cache_of, position_ids, with_cache


def safedecoding_scores(p_base: torch.Tensor, p_expert: torch.Tensor, alpha: float, top_c: int) -> torch.Tensor:
    """SafeDecoding's scores over the vocabulary, ``-inf`` outside its sample space.

    The sample space is the intersection of both models' top-k tokens for the
    smallest k at which it holds at least ``top_c`` tokens; a token in it
    scores ``p_base + alpha * (p_expert - p_base)``. Shapes (batch, vocab).
    """
    c = max(1, min(top_c, p_base.shape[-1]))

    def ranks(p: torch.Tensor) -> torch.Tensor:
        order = p.argsort(dim=-1, descending=True, stable=True)
        out = torch.empty_like(order)
        out.scatter_(-1, order, torch.arange(p.shape[-1], device=p.device).expand_as(order))
        return out

    worst = torch.maximum(ranks(p_base), ranks(p_expert))  # a token is in the top-k of both iff worst < k
    k = worst.kthvalue(c, dim=-1).values  # the smallest k - 1 with at least c tokens
    space = worst <= k[:, None]
    scores = p_base + alpha * (p_expert - p_base)
    return scores.masked_fill(~space, float("-inf"))


class SafeDecodingProcessor(LogitsProcessor):
    """Picks each token greedily by ``safedecoding_scores``: the base model's scores (as ``generate`` hands them
    over) against the expert's, which this processor computes in ``expert_mode`` on its own KV cache.

    The returned scores are 0 for the chosen token and ``-inf`` elsewhere, so sampling settings (temperature,
    top-p, top-k) cannot move the pick. ``encoded`` is the generation loop's prompt batch (padded on the left,
    or after the prefix its prompts share).
    """

    def __init__(self, model: MoGUModel, encoded: dict[str, torch.Tensor], alpha: float, top_c: int,
                 expert_mode: str = SLOT) -> None:
        self.model, self.alpha, self.top_c, self.expert_mode = model, alpha, top_c, expert_mode
        self.prompt_mask = encoded["attention_mask"]
        self.cache: Any = None
        self.read = 0  # tokens of each row the expert has read

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self.prompt_mask
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], input_ids.shape[1] - mask.shape[1])], dim=1)
        base_model = self.model.base_model
        if self.read == 0:
            # the expert acts where it was trained to: under router.prompt "base" the base model reads the prompt
            # but its last token, as in generation
            self.cache = read_prompt_in_base(self.model, input_ids, mask)
            self.read = 0 if self.cache is None else input_ids.shape[1] - 1
        with self.model.mode(self.expert_mode):
            out = base_model(input_ids=input_ids[:, self.read :], attention_mask=mask,
                             position_ids=position_ids(mask)[:, self.read :], use_cache=True,
                             **with_cache(base_model, self.cache))
        self.cache, self.read = cache_of(base_model, out), input_ids.shape[1]
        p_expert = out.logits[:, -1].float().softmax(-1)
        best = safedecoding_scores(scores.float().softmax(-1), p_expert, self.alpha, self.top_c).argmax(-1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, best[:, None], 0.0)


def safe_decode(
    model: MoGUModel, chats: Sequence[ChatInput], decoding: DecodingConfig, alpha: float, m: int, top_c: int,
    expert_mode: str = SLOT,
) -> list[str]:
    """SafeDecoding with one copy of the weights: the first ``m`` tokens are picked greedily by
    ``safedecoding_scores`` (base model against the expert in ``expert_mode``), the rest by the base model
    with ``decoding``."""
    base_first = decoding.model_copy(update={"mode": "base", "routed_tokens": m})

    def processor(encoded: dict[str, torch.Tensor]) -> SafeDecodingProcessor:
        return SafeDecodingProcessor(model, encoded, alpha, top_c, expert_mode)

    return [r.text for r in generate(model, list(chats), base_first, first_tokens=processor)]


class SafeDecoding(Defense):
    """Xu et al. 2024: over the first ``m`` tokens, amplify what a safety expert (the SFT LoRA) prefers.

    Paper settings: m 2, alpha 3, top_c 5. The first ``m`` tokens are greedy;
    the rest follows the shared decoding settings.
    """

    name = "safedecoding"

    def __init__(self, model: MoGUModel, expert: SFTDefense, alpha: float = 3.0, m: int = 2, top_c: int = 5) -> None:
        super().__init__(model)
        if alpha < 0 or m < 0 or top_c < 1:
            raise DefenseError(f"safedecoding: need alpha >= 0, m >= 0, top_c >= 1; got {alpha}, {m}, {top_c}")
        self.expert, self.alpha, self.m, self.top_c = expert, float(alpha), int(m), int(top_c)

    @classmethod
    def from_options(cls, model: MoGUModel, options: Options, cache_dir: Path) -> SafeDecoding:
        """Its expert is the ``sft`` baseline, configured under ``options["sft"]``."""
        return cls(model, SFTDefense.from_options(model, options, cache_dir), **options.get(cls.name, {}))

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "m": self.m, "top_c": self.top_c, "expert": self.expert.params()}

    def info(self) -> dict[str, Any]:
        return {"expert": self.expert.info()}

    def prepare(self) -> None:
        self.expert.prepare()

    def generate(self, prompts: Sequence[Prompt], decoding: DecodingConfig) -> list[str]:
        if not prompts:
            return []
        self.prepare()
        assert self.expert.state is not None
        with borrowed_expert(self.model, self.expert.state):
            return safe_decode(self.model, [p.text for p in prompts], decoding, self.alpha, self.m, self.top_c)
