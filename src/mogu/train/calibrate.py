"""Calibrate the trained routers: one logit shift towards the glad expert, chosen on the validation split.

The routed model refuses as soon as one routed layer sends the answer's
opening to the unwilling expert (docs/TRAINING.md, "Which layers to route"):
its decision is an OR over layers, while each router is trained, by a
symmetric gate loss, as if it decided alone. So the trained routers refuse
benign prompts more often than they miss harmful ones. Adding the same shift
to every glad logit (and taking it from every unwilling one) makes each layer
send a prompt to the unwilling expert only when it is surer; the shift whose
routed answers to the validation split have the best balance of harmful
refusal and benign answering is kept. It is folded into the routers' biases,
so the bundle and everything that loads it are unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mogu.io.files import write_json_atomic
from mogu.model import MoGUModel
from mogu.train.config import TrainConfig
from mogu.train.data import Record, validation_records
from mogu.train.stages import router_decoding, routed_validation

log = logging.getLogger(__name__)


def shift_routers(model: MoGUModel, shift: float) -> None:
    for router in model.named_routers().values():  # the first decision's reader too
        router.shift_towards_glad(shift)


def choose_router_shift(model: MoGUModel, records: list[Record], config: TrainConfig, trained: dict, path: Path) -> None:
    """Measure each candidate shift on the validation splits and record all of them and the choice in ``path``.

    ``trained`` is the router stage's validation of its selected checkpoint
    (shift 0: not measured again). The routers are left as they were.
    Ties go to the shift nearest 0.
    """
    if path.is_file():
        return
    val = validation_records(records, config.validation, config.validation_per_label)
    measured = {0.0: trained}
    for shift in sorted(set(config.calibration.shifts) - {0.0}):
        shift_routers(model, shift)
        try:
            measured[shift] = routed_validation(model, val, router_decoding(config))
        finally:
            shift_routers(model, -shift)
        log.info("router shift %+.2f: %s", shift, {k: round(v, 3) for k, v in measured[shift].items()})
    chosen = max(sorted(measured, key=abs), key=lambda s: measured[s]["balanced"])  # max keeps the first of equals
    write_json_atomic(path, {"shift": chosen, "validation": {str(s): m for s, m in measured.items()}})


def apply_router_shift(model: MoGUModel, path: Path) -> float:
    """Shift the routers by the choice recorded in ``path``; returns the shift."""
    shift = json.loads(path.read_text(encoding="utf-8"))["shift"]
    shift_routers(model, shift)
    return shift
