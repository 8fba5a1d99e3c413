"""Calibrate the routers: one logit shift towards the glad expert, chosen on the validation splits.

The routed model refuses as soon as one routed layer sends the answer's opening to the unwilling expert: its
decision is an OR over layers, while each router is trained, by a symmetric gate loss, as if it decided alone.
So trained routers refuse benign prompts more often than they miss harmful ones. Adding the same shift to every
glad logit (and taking it from every unwilling one) makes each layer send a prompt to the unwilling expert only
when it is surer. Two ways to choose it:

- by balance (``calibration.shifts``): the candidate with the best mean of harmful refusal and benign answering;
- by an operating point (``calibration.max_benign_refusal``): the smallest shift whose benign refusal is at most
  the target, with the harmful refusal that costs recorded beside it.

The shift is folded into the routers' biases, so the bundle and everything that loads it are unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mogu.io.files import write_json_atomic
from mogu.model import MoGUModel
from mogu.model.config import DecodingConfig
from mogu.train.config import CalibrationConfig, TrainConfig
from mogu.train.data import Record, validation_records
from mogu.train.stages import router_decoding, routed_validation

log = logging.getLogger(__name__)


def shift_routers(model: MoGUModel, shift: float) -> None:
    """Add ``shift`` to every glad logit and take it from every unwilling one (the first decision's reader too)."""
    for router in model.named_routers().values():
        router.shift_towards_glad(shift)


def measure_shifts(
    model: MoGUModel, val: list[Record], decoding: DecodingConfig, shifts: list[float], measured: dict[float, dict]
) -> dict[float, dict]:
    """``measured`` plus the validation figures of each of ``shifts`` not in it; the routers are left as they were."""
    measured = dict(measured)
    for shift in sorted(set(shifts) - set(measured)):
        shift_routers(model, shift)
        try:
            measured[shift] = routed_validation(model, val, decoding)
        finally:
            shift_routers(model, -shift)
        log.info("router shift %+.2f: %s", shift, {k: round(v, 3) for k, v in measured[shift].items()})
    return measured


def candidate_shifts(calibration: CalibrationConfig) -> list[float]:
    """The shifts a calibration measures besides 0."""
    return calibration.target_shifts if calibration.max_benign_refusal is not None else calibration.shifts


def choose_shift(measured: dict[float, dict], max_benign_refusal: float | None) -> float:
    """By balance (ties to the shift nearest 0), or the smallest shift meeting ``max_benign_refusal`` (if none
    does, the one with the least benign refusal, with a warning)."""
    if max_benign_refusal is None:
        return max(sorted(measured, key=abs), key=lambda s: measured[s]["balanced"])  # max keeps the first of equals
    meeting = [s for s in sorted(measured) if s >= 0 and measured[s]["benign_refusal"] <= max_benign_refusal]
    if meeting:
        return meeting[0]
    best = min(sorted(measured), key=lambda s: measured[s]["benign_refusal"])
    log.warning("no shift tried meets benign refusal <= %.3f on validation; the lowest is %.3f at shift %+.2f",
                max_benign_refusal, measured[best]["benign_refusal"], best)
    return best


def calibration_record(measured: dict[float, dict], chosen: float, max_benign_refusal: float | None) -> dict:
    """What ``calibration.json`` holds: the choice, how it was made, and every shift's validation figures."""
    return {"shift": chosen, "max_benign_refusal": max_benign_refusal,
            "harmful_refusal": measured[chosen]["harmful_refusal"], "benign_refusal": measured[chosen]["benign_refusal"],
            "validation": {str(s): m for s, m in sorted(measured.items())}}


def choose_router_shift(model: MoGUModel, records: list[Record], config: TrainConfig, measured: dict[float, dict],
                        path: Path) -> None:
    """Measure shift 0 and the candidate shifts on the validation splits and record them and the choice in
    ``path``. ``measured``: shifts already measured (the router stage's validation of its selected checkpoint is
    shift 0's), not measured again."""
    if path.is_file():
        return
    val = validation_records(records, config.validation, config.validation_per_label)
    measured = measure_shifts(model, val, router_decoding(config), [0.0, *candidate_shifts(config.calibration)], measured)
    chosen = choose_shift(measured, config.calibration.max_benign_refusal)
    write_json_atomic(path, calibration_record(measured, chosen, config.calibration.max_benign_refusal))


def apply_router_shift(model: MoGUModel, path: Path) -> float:
    """Shift the routers by the choice recorded in ``path``; returns the shift."""
    shift = json.loads(path.read_text(encoding="utf-8"))["shift"]
    shift_routers(model, shift)
    return shift
