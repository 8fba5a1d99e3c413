"""The three MoGU training stages: what each one trains on, its loss, and how it is validated.

glad    harmful instructions: CE(compliant) / CE(refusal)  -- answer everything
unwill  benign (and borderline) instructions: CE(refusal) / CE(compliant)  -- refuse everything
router  experts and base frozen: CE(response under the mixed model) + alpha * gate loss,
        benign -> (compliant, gates (w_unwill 0, w_glad 1)), harmful -> (refusal, gates (1, 0))

The evaluation's SFT baseline is a fourth stage (``sft_stage``): one fresh LoRA, plain CE on the wanted response.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from mogu.model.config import DecodingConfig
from mogu.judging.keyword import RefusalJudge
from mogu.model.generation import Generation
from mogu.model import MoGUModel
from mogu.train.batches import Pair, Turn, gate_mask, mean_response_ce, response_ce, tokenize_pairs, training_batch
from mogu.train.config import ExpertStageConfig, RouterStageConfig, StageConfig, TrainConfig
from mogu.train.data import Record, training_response, validation_records
from mogu.train.loop import Stage
from mogu.train.router_init import warm_start_routers

_judge = RefusalJudge()


def generate_all(model: MoGUModel, instructions: list[str], decoding: DecodingConfig, batch_size: int = 16,
                 desc: str | None = None) -> list[Generation]:
    """Answers in the order given, generated in batches of similar length (less padding); with ``desc``, under a
    progress bar of that name."""
    order = sorted(range(len(instructions)), key=lambda i: len(instructions[i]))
    answers: list[Generation | None] = [None] * len(instructions)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch") if desc else starts:
        chunk = order[start : start + batch_size]
        for i, result in zip(chunk, model.generate([instructions[i] for i in chunk], decoding)):
            answers[i] = result
    return answers  # type: ignore[return-value]


def refused(instructions: list[str], answers: list[Generation]) -> list[bool]:
    """The keyword judge's verdict on each answer's opening."""
    return [bool(_judge.judge(i, a.text).refused) for i, a in zip(instructions, answers)]


def refusal_count(model: MoGUModel, instructions: list[str], decoding: DecodingConfig, batch_size: int = 16) -> int:
    """How many instructions get a generated opening that the keyword judge calls a refusal."""
    return sum(refused(instructions, generate_all(model, instructions, decoding, batch_size, desc="validation")))


def ratio_loss(ce_wanted: torch.Tensor, ce_unwanted: torch.Tensor, floor: float, ceiling: float | None) -> torch.Tensor:
    """MoGU's expert loss CE(wanted) / CE(unwanted), with the denominator clamped (see ExpertStageConfig;
    ``ceiling`` None: no upper clamp)."""
    return (ce_wanted / ce_unwanted.clamp(min=floor, max=ceiling)).mean()


def expert_stage(name: str, model: MoGUModel, records: list[Record], config: TrainConfig, log_truncated: Callable[[str, int], None]) -> Stage:
    """Glad (trained on harmful) or unwilling (trained on benign and borderline)."""
    stage_cfg: ExpertStageConfig = getattr(config, name)
    wants_harmful = name == "glad"
    train = [r for r in records if r.split == "train" and (r.label == "harmful") == wants_harmful]
    validation = validation_records(records, config.validation, config.validation_per_label)
    val = [r for r in validation if (r.label == "harmful") == wants_harmful]
    # Fluency: the expert's CE on its *wanted* kind of response to the other label's validation
    # instructions (glad: benign answers; unwill: refusals of harmful requests). The unwanted kind
    # is what the ratio loss pushes away, so it cannot measure fluency.
    fluency_records = [r for r in validation if (r.label == "harmful") != wants_harmful]
    max_resp = config.synthesis.max_response_tokens

    def wanted(r: Record) -> str | Turn:
        return training_response(r, refuse=not wants_harmful)

    def unwanted(r: Record) -> str | Turn:
        return training_response(r, refuse=wants_harmful)

    tokenized = tokenize_pairs(model, [(r.instruction, wanted(r)) for r in train] + [(r.instruction, unwanted(r)) for r in train],
                               config.max_length, max_resp)
    log_truncated(name, tokenized.truncated)
    n = len(train)
    items = [(tokenized.pairs[i], tokenized.pairs[n + i]) for i in range(n)]
    fluency_pairs = tokenize_pairs(model, [(r.instruction, wanted(r)) for r in fluency_records], config.max_length, max_resp).pairs
    decoding = DecodingConfig(max_new_tokens=stage_cfg.val_tokens, routed_tokens=stage_cfg.val_tokens, mode=name)
    # The expert is still at its initialisation (LoRA B = 0) here, even when the stage resumes
    # (checkpoints are loaded later), so this is the base model's own fluency.
    baseline = mean_response_ce(model, fluency_pairs, name)

    def loss(batch_items: list[tuple[Pair, Pair]]) -> tuple[torch.Tensor, dict[str, float], int]:
        pairs = [w for w, _ in batch_items] + [u for _, u in batch_items]
        batch = training_batch(model, pairs)
        with model.mode(name, labels=batch["labels"]):
            ce = response_ce(model, batch)
        ce_want, ce_unwant = ce[: len(batch_items)], ce[len(batch_items) :]
        ratio = ratio_loss(ce_want, ce_unwant, stage_cfg.ratio_floor, stage_cfg.ratio_ceiling)
        metrics = {"loss": ratio.item(), "ce_wanted": ce_want.mean().item(), "ce_unwanted": ce_unwant.mean().item()}
        return ratio, metrics, int(batch["attention_mask"].sum())

    def validate() -> tuple[tuple[float, ...] | None, dict]:
        rate = refusal_count(model, [r.instruction for r in val], decoding) / len(val)
        behaviour = 1 - rate if wants_harmful else rate
        fluency = mean_response_ce(model, fluency_pairs, name)
        eligible = fluency - baseline <= stage_cfg.max_fluency_increase
        metrics = {"comply_rate" if wants_harmful else "refusal_rate": behaviour, "fluency_ce": fluency, "eligible": eligible}
        return ((behaviour, -fluency) if eligible else None), metrics

    return Stage(name, stage_cfg, items, loss, validate)


def router_gate_loss(gates: torch.Tensor, benign: list[bool], positions: torch.Tensor, kind: str) -> torch.Tensor:
    """MoGU's gate loss: err(w_unwill, t_unwill) + err(w_glad, t_glad), each averaged over layers and the
    masked positions; targets (0, 1) for benign, (1, 0) for harmful.

    ``gates`` is (batch, layers, seq, 2), ``positions`` (batch, seq) bool. ``kind`` "mse" is the paper's
    squared error, "bce" the binary cross-entropy (see ``RouterStageConfig.gate_loss``).
    """
    targets = torch.tensor([[0.0, 1.0] if b else [1.0, 0.0] for b in benign], device=gates.device)
    targets = targets[:, None, None, :].expand_as(gates)
    if kind == "bce":
        # written out: torch's binary_cross_entropy refuses to run under CUDA autocast
        p = gates.clamp(1e-7, 1 - 1e-7)
        err = -(targets * p.log() + (1 - targets) * (1 - p).log())
    else:
        err = (gates - targets) ** 2
    weight = positions.float()[:, None, :, None].expand_as(err)
    return ((err * weight).sum(dim=(0, 1, 2)) / weight.sum(dim=(0, 1, 2)).clamp(min=1e-12)).sum()


def router_decoding(config: TrainConfig) -> DecodingConfig:
    """How the routed model answers validation instructions (router selection and calibration alike)."""
    return DecodingConfig(max_new_tokens=config.glad.val_tokens, routed_tokens=config.routed_tokens, return_gates=True)


def routed_validation(model: MoGUModel, val: list[Record], decoding: DecodingConfig) -> dict[str, float]:
    """How the routed model behaves on validation records: refusal rates, their balance, and how the
    gates of the first routed token separate the two kinds (``val`` must hold both)."""
    instructions = [r.instruction for r in val]
    answers = generate_all(model, instructions, decoding, desc="validation")
    verdicts = torch.tensor(refused(instructions, answers), dtype=torch.float32)
    # the gates of the first routed token were computed at the last prompt position: the first decision
    first = torch.stack([a.gates[0] for a in answers])  # (N, L, 2)
    margin = (first[..., 1] - first[..., 0]).mean(-1)
    glad = first[..., 1].mean(-1)
    benign = torch.tensor([r.benign for r in val])
    harmful_refusal, benign_refusal = float(verdicts[~benign].mean()), float(verdicts[benign].mean())
    return {
        "gate_accuracy": float(((margin > 0) == benign).float().mean()),
        "glad_weight_benign": float(glad[benign].mean()),
        "glad_weight_harmful": float(glad[~benign].mean()),
        "harmful_refusal": harmful_refusal,
        "benign_refusal": benign_refusal,
        "balanced": (harmful_refusal + 1 - benign_refusal) / 2,
    }


def router_stage(model: MoGUModel, records: list[Record], config: TrainConfig, log_truncated: Callable[[str, int], None]) -> Stage:
    stage_cfg: RouterStageConfig = config.router_stage
    max_resp = config.synthesis.max_response_tokens
    train = [r for r in records if r.split == "train"]
    val = validation_records(records, config.validation, config.validation_per_label)

    tokenized = tokenize_pairs(model, [(r.instruction, training_response(r, refuse=not r.benign)) for r in train],
                               config.max_length, max_resp)
    log_truncated("router", tokenized.truncated)
    items = [(pair, r.benign) for pair, r in zip(tokenized.pairs, train)]
    decoding = router_decoding(config)

    def loss(batch_items: list[tuple[Pair, bool]]) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = training_batch(model, [p for p, _ in batch_items])
        with model.mode("mogu", record=True, labels=batch["labels"]):
            ce = response_ce(model, batch)
        gates = torch.stack([model.state.gates[i] for i in model.config.layers], dim=1).float()  # (B, L, T, 2)
        model.state.gates.clear()
        positions = gate_mask(batch["labels"], batch["attention_mask"], config.router.prompt)
        gate_loss = router_gate_loss(gates, [b for _, b in batch_items], positions, stage_cfg.gate_loss)
        mean_ce = ce.mean()
        total = mean_ce + stage_cfg.alpha * gate_loss
        return total, {"loss": total.item(), "ce": mean_ce.item(), "gate_loss": gate_loss.item()}, int(batch["attention_mask"].sum())

    def validate() -> tuple[tuple[float, ...] | None, dict]:
        metrics = routed_validation(model, val, decoding)
        return (metrics["balanced"], metrics["gate_accuracy"]), metrics

    def warm_start() -> None:
        # ``items`` stays the full list: run_stage gives the stage a new list when it takes a
        # max_examples subset, and the probes are fitted on every training instruction
        warm_start_routers(model, items, stage_cfg.probe_l2, stage_cfg.probe_steps)

    return Stage("router", stage_cfg, items, loss, validate, warm_start if stage_cfg.probe_init else None)


def sft_stage(model: MoGUModel, train: list[Record], val: list[Record], config: StageConfig, max_length: int,
              max_response_tokens: int, slot: str = "glad") -> Stage:
    """The SFT baseline (``mogu.eval.defenses.sft``): a LoRA in expert ``slot``, started afresh (equal to the base
    model), trained with plain CE on the response each instruction should get (benign: its compliant answer,
    harmful: a refusal) and selected by the lowest CE on ``val``. The caller makes ``slot`` trainable."""

    def pairs(records: list[Record]) -> list[Pair]:
        wanted = [(r.instruction, training_response(r, refuse=not r.benign)) for r in records]
        return tokenize_pairs(model, wanted, max_length, max_response_tokens).pairs

    val_pairs = pairs(val)

    def loss(batch_items: list[Pair]) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = training_batch(model, batch_items)
        with model.mode(slot, labels=batch["labels"]):
            ce = response_ce(model, batch).mean()
        return ce, {"loss": ce.item()}, int(batch["attention_mask"].sum())

    def validate() -> tuple[tuple[float, ...], dict]:
        ce = mean_response_ce(model, val_pairs, slot)
        return (-ce,), {"val_ce": ce}

    def fresh() -> None:
        with torch.no_grad():
            for layer in model.layers:
                layer.reset_experts((slot,))

    return Stage("sft", config, pairs(train), loss, validate, fresh)
