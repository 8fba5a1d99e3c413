"""``mogu calibrate``: move a finished bundle's routers to the operating point an operator asks for.

The operator names the largest benign refusal they accept on validation; the smallest logit shift towards the
glad expert that meets it is folded into the routers, and the harmful refusal it costs is reported beside every
shift tried. The validation splits are the bundle's own (its training config), read from its training data or
from ``data``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from mogu.io.files import write_json_atomic
from mogu.model import MoGUModel
from mogu.model.config import DtypeName
from mogu.model.bundle_files import CONFIG_NAME
from mogu.train.augment import framed_copies
from mogu.train.calibrate import calibration_record, choose_shift, measure_shifts, shift_routers
from mogu.train.config import TrainConfig
from mogu.train.data import load_records, validation_records
from mogu.train.pipeline import CALIBRATION_FILE, TRAIN_CONFIG, bundle_train_config
from mogu.train.stages import router_decoding

log = logging.getLogger(__name__)

#: Files of a bundle that describe its routers as trained: stale once they are moved, so not carried over.
STALE_AFTER_CALIBRATION = ("evaluation.json",)


def calibrate_bundle(
    bundle: Path,
    max_benign_refusal: float,
    data: Path | None = None,
    out: Path | None = None,
    shifts: list[float] | None = None,
    dtype: DtypeName = "auto",
) -> dict:
    """Measure ``shifts`` (default: the training config's ``calibration.target_shifts``) from the bundle's routers
    as they are, fold in the smallest that keeps benign validation refusal at most ``max_benign_refusal``, and
    write the bundle to ``out`` (default: in place, atomically). Returns the calibration record."""
    bundle = Path(bundle)
    config = bundle_train_config(bundle) if (bundle / TRAIN_CONFIG).is_file() else TrainConfig()
    if data is None and (bundle / "data.jsonl").is_file():
        data = bundle / "data.jsonl"  # the training records the bundle was built from
    records = framed_copies(load_records(data if data is not None else config.data), config.framing)
    val = validation_records(records, config.validation, config.validation_per_label)
    if not val:
        raise ValueError(f"no instructions of the validation splits {config.validation} in "
                         f"{data or config.data or 'the packaged data'}")
    model = MoGUModel.from_pretrained(bundle, dtype=dtype)
    decoding = router_decoding(config)
    measured = measure_shifts(model, val, decoding, [0.0, *(shifts or config.calibration.target_shifts)], {})
    chosen = choose_shift(measured, max_benign_refusal)
    shift_routers(model, chosen)
    record = calibration_record(measured, chosen, max_benign_refusal)
    # the training records and logs come along; the calibration record says what was done before, too
    extra = {f.name: f for f in bundle.iterdir()
             if f.is_file() and f.name not in (CONFIG_NAME, CALIBRATION_FILE, *STALE_AFTER_CALIBRATION)
             and not f.name.endswith(".safetensors")}
    history = bundle / CALIBRATION_FILE
    previous = json.loads(history.read_text(encoding="utf-8")) if history.is_file() else None
    with tempfile.TemporaryDirectory() as staging:
        write_json_atomic(Path(staging) / CALIBRATION_FILE, {**record, "before": previous})
        model.save_pretrained(out or bundle, extra_files={**extra, CALIBRATION_FILE: Path(staging) / CALIBRATION_FILE})
    log.info("routers shifted by %+.2f: benign refusal %.3f, harmful refusal %.3f on validation", chosen,
             record["benign_refusal"], record["harmful_refusal"])
    return record
