"""``mogu train``: instructions -> synthesis -> probes (layers, reader) -> glad -> unwilling -> router -> calibration -> bundle.

Work happens in ``OUT.work/`` next to the output folder. Each step writes its
own files there (``data.jsonl``, ``layers.json``, ``glad/``, ``unwill/``,
``router/``, ``calibration.json``), so a rerun of the same command skips what
is done and resumes the step that was interrupted from its last checkpoint.
The bundle is written to ``OUT`` only at the end, atomically; the work folder
is then removed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from mogu.io.files import write_json_atomic
from mogu.io.provenance import resolved_dict
from mogu.model.config import DecodingConfig, with_older_router
from mogu.judging.stats import wilson_interval
from mogu.model import MoGUModel
from mogu.model.bundle import Stage
from mogu.model.bundle_files import is_bundle
from mogu.train.augment import framed_copies
from mogu.train.calibrate import apply_router_shift, choose_router_shift
from mogu.train.config import TrainConfig
from mogu.train.data import (
    VALIDATION_SPLITS,
    Record,
    build_dataset,
    check_training_splits,
    load_records,
    source_id,
    stable_draw,
    summarise,
    validation_records,
)
from mogu.train.probes import LAYERS_FILE, run_probes
from mogu.train.loop import TrainLog, make_accelerator, restore_random_stream, run_stage
from mogu.train.stages import expert_stage, generate_all, refused, router_stage

log = logging.getLogger(__name__)

TRAIN_CONFIG = "train_config.json"
CALIBRATION_FILE = "calibration.json"
EXTRA_FILES = (TRAIN_CONFIG, "train_log.jsonl", "data.jsonl", "selection.json", "evaluation.json")


class OutputExistsError(FileExistsError):
    """The output folder holds something that this run would replace."""


def _saved_config(folder: Path) -> dict | None:
    path = folder / TRAIN_CONFIG
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("config")


# What a bundle was trained with when its config predates a setting: every layer routed (before layer
# selection), float32 weights (before ``dtype``); not today's defaults (the router section's: OLDER_ROUTER).
OLDER_BUNDLES: dict[str, Any] = {"select_layers": None, "dtype": "float32"}


def bundle_train_config(bundle: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The fully resolved training config saved with a bundle written by ``mogu train``, with ``overrides``
    merged in (a dict value updates that section's keys, anything else replaces the value)."""
    saved = _saved_config(bundle)
    if saved is None:
        raise FileNotFoundError(f"{bundle / TRAIN_CONFIG}: not found (not a bundle written by mogu train?)")
    merged = with_older_router({**OLDER_BUNDLES, **saved})
    for key, value in (overrides or {}).items():
        section = merged.get(key)
        merged[key] = {**section, **value} if isinstance(value, dict) and isinstance(section, dict) else value
    return TrainConfig.model_validate(merged)


def prepare_output(config: TrainConfig, out: Path, overwrite: bool) -> tuple[Path, bool]:
    """(work folder, already done). Refuses to replace foreign or differently-configured folders."""
    wanted = config.model_dump(mode="json")
    work = out.with_name(out.name + ".work")
    if out.exists() and any(out.iterdir()):
        if is_bundle(out) and _saved_config(out) == wanted and not overwrite:
            return work, True
        if not overwrite:
            raise OutputExistsError(
                f"{out} already holds {'a bundle trained with another config' if is_bundle(out) else 'other files'}; "
                "pass --overwrite to replace it"
            )
    if work.exists() and _saved_config(work) != wanted:
        if not overwrite:
            raise OutputExistsError(f"{work} holds an interrupted run with another config; pass --overwrite to start over")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / TRAIN_CONFIG, resolved_dict(config))
    return work, False


def refusal_rates(refusals: dict[str, list[bool]], records: list[Record]) -> dict[str, dict[str, Any]]:
    """Refusal rates (and their 95% Wilson intervals) per label of ``records``, from each model's verdicts
    (``{"base": [...], "mogu": [...]}``, in the order of ``records``)."""
    rates: dict[str, dict[str, Any]] = {}
    for label in ("harmful", "benign", "borderline"):
        rows = [i for i, r in enumerate(records) if r.label == label]
        if not rows:
            continue
        rates[label] = {"n": len(rows)}
        for name, verdicts in refusals.items():
            count = sum(verdicts[i] for i in rows)
            rates[label][name] = count / len(rows)
            rates[label][f"{name}_ci95"] = list(wilson_interval(count, len(rows)))
    return rates


def evaluation_records(records: list[Record], config: TrainConfig) -> dict[str, list[Record]]:
    """What the finished bundle is evaluated on, by split: the test split and, side by side, at most
    ``config.eval_validation_per_label`` instructions of each label from each validation split present (framed
    copies left out): in distribution ('val'), categories never trained on ('val_heldout'), another writing
    style ('val_style')."""
    plain = [r for r in records if source_id(r) == r.id]
    splits = {"test": [r for r in plain if r.split == "test"]}
    for split in VALIDATION_SPLITS:
        splits[split] = stable_draw(plain, [split], config.eval_validation_per_label)
    return {split: chosen for split, chosen in splits.items() if chosen}


def records_used(records: list[Record], config: TrainConfig) -> list[Record]:
    """The records this run reads, in their given order: at most ``train_per_label`` training instructions of each
    label, the validation draws that selection and the evaluation read, and the test split. Responses are made
    for these only; what is left out is logged, never dropped silently."""
    kept = {id(r) for r in stable_draw(records, ["train"], config.train_per_label, salt="~train")}
    kept |= {id(r) for r in validation_records(records, config.validation, config.validation_per_label)}
    kept |= {id(r) for chosen in evaluation_records(records, config).values() for r in chosen}
    used = [r for r in records if id(r) in kept]
    if len(used) < len(records):
        log.info("reading %d of %d instructions (train_per_label %s, validation_per_label %s, "
                 "eval_validation_per_label %s): %s", len(used), len(records), config.train_per_label,
                 config.validation_per_label, config.eval_validation_per_label, summarise(used))
    return used


def probe_records(records: list[Record], config: TrainConfig) -> list[Record]:
    """The training instructions whose prompts fit the probes on the base model (``probe_per_label`` of each label,
    or ``train_per_label`` if that is more: a stable draw that holds the stages' one), with their framed copies;
    only their prompts are read."""
    sizes = (config.probe_per_label, config.train_per_label)
    chosen = stable_draw(records, ["train"], None if None in sizes else max(sizes), salt="~train")
    log.info("probes read the prompts of %d training instructions (probe_per_label %s): %s", len(chosen),
             config.probe_per_label, summarise(chosen))
    return framed_copies(chosen, config.framing)


def split_refusal_rates(model: MoGUModel, splits: dict[str, list[Record]], max_new_tokens: int,
                        modes: tuple[str, ...] = ("base", "mogu")) -> dict[str, dict[str, Any]]:
    """``refusal_rates`` per split, of the model in each of ``modes``; each mode answers every split's
    instructions in one pass (batches of similar length, whatever their split)."""
    instructions = [r.instruction for rows in splits.values() for r in rows]
    verdicts = {}
    for mode in modes:
        answers = generate_all(model, instructions, DecodingConfig(max_new_tokens=max_new_tokens, mode=mode),
                               batch_size=32, desc=f"evaluate ({mode})")
        verdicts[mode] = refused(instructions, answers)
    result: dict[str, Any] = {}
    start = 0
    for split, rows in splits.items():
        result[split] = refusal_rates({m: v[start : start + len(rows)] for m, v in verdicts.items()}, rows)
        start += len(rows)
    return result


def evaluate_splits(model: MoGUModel, records: list[Record], config: TrainConfig) -> dict:
    """Base model against MoGU on ``evaluation_records``, and which splits selection read."""
    rates = split_refusal_rates(model, evaluation_records(records, config), config.eval_max_new_tokens)
    return {"judge": "keyword", "max_new_tokens": config.eval_max_new_tokens, "selected_on": config.validation,
            "splits": {split: {"refusal_rate": rows} for split, rows in rates.items()}}


# What each stage needs trained first (``train(..., stage=...)``): the experts are independent.
STAGE_NEEDS: dict[Stage, tuple[Stage, ...]] = {"glad": ("glad",), "unwill": ("unwill",), "router": ("glad", "unwill", "router")}


def stages_to_run(config: TrainConfig, stage: Stage | None) -> tuple[Stage, ...]:
    """The stages ``train(config, ..., stage)`` runs, in order: what ``stage`` (None: the whole bundle) needs, less
    the router stage when the routers decide nothing (``router.later`` "reader"); a stage that cannot run is refused."""
    if stage is not None and stage not in STAGE_NEEDS:
        raise ValueError(f"unknown stage {stage!r}: choose one of {', '.join(STAGE_NEEDS)}")
    trains_routers = config.router.later == "routers"
    if stage == "router" and not trains_routers:
        raise ValueError("no router stage to run: under router.later 'reader' the first decision's reader holds for "
                         "every routed token and the routers are not trained")
    return tuple(name for name in STAGE_NEEDS[stage or "router"] if name != "router" or trains_routers)


def train(config: TrainConfig, out: str | Path, overwrite: bool = False, stage: Stage | None = None) -> Path:
    """Run (or resume) the whole pipeline and write the bundle to ``out``; returns ``out``.

    With ``stage`` ("glad", "unwill" or "router"), run only what that stage
    needs and is not done yet in the work folder (the data and probes steps,
    for the router both experts, and its calibration), then stop without
    writing the bundle; returns the work folder. A later run without
    ``stage`` (same config) finishes from there.
    """
    stages = stages_to_run(config, stage)  # refuses a stage that cannot run before anything is read
    out = Path(out)
    every_record = load_records(config.data)
    records = records_used(every_record, config)
    check_training_splits(records, config.data, config.validation)  # before anything is loaded or written
    accelerator = make_accelerator()
    work, done = prepare_output(config, out, overwrite)
    if done:
        log.info("%s is already trained with this config; nothing to do", out)
        return out
    torch.manual_seed(config.seed)
    train_log = TrainLog(work / "train_log.jsonl", accelerator)
    timings: dict[str, float] = {}

    def log_truncated(stage: str, count: int) -> None:
        if count:
            log.info("%s: %d examples truncated to fit max_length %d / max_response_tokens %d", stage, count,
                     config.max_length, config.synthesis.max_response_tokens)
            train_log.write(stage=stage, truncated=count)

    start = time.perf_counter()
    # nothing routed yet: the data and the layer choice are made on the base model, then only the chosen
    # layers get experts and routers
    model = MoGUModel.from_base(config.base, target_module=config.target_module, layers=[], expert=config.expert,
                                router=config.router, routed_tokens=config.routed_tokens, dtype=config.dtype,
                                device=accelerator.device)
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    if accelerator.is_main_process:
        records = build_dataset(model, records, work / "data.jsonl", config.synthesis.max_response_tokens,
                                config.synthesis.batch_size)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        records = load_records(work / "data.jsonl")
    records = framed_copies(records, config.framing)
    counts = summarise(records)
    log.info("instructions per split and label: %s", counts)
    train_log.write(stage="data", counts=counts)
    timings["data"] = time.perf_counter() - start

    start = time.perf_counter()
    validation = validation_records(records, config.validation, config.validation_per_label)
    if accelerator.is_main_process:
        run_probes(model, probe_records(every_record, config), validation, config, work)
    accelerator.wait_for_everyone()
    probes = run_probes(model, [], validation, config, work)  # reads the files (nothing to do without probes)
    model.route(probes.routed, config.target_module, probes.reader_layers)
    if probes.reader is not None and model.reader is not None:
        w, b = probes.reader
        model.reader.set_linear(unwill=(-w, -b), glad=(w, b))
    train_log.write(stage="probes", selected=model.config.layers, reader_layers=probes.reader_layers)
    timings["probes"] = time.perf_counter() - start

    selection: dict[str, dict] = {}
    for name in stages:
        stage_dir = work / name
        done_file = stage_dir / "selection.json"
        if done_file.is_file():
            selection[name] = json.loads(done_file.read_text(encoding="utf-8"))
            if name == "router":
                model.load_router(stage_dir / "router.safetensors")
            else:
                model.load_expert(name, stage_dir / "adapter")
            restore_random_stream(stage_dir, accelerator)  # the later stages draw as in one run
            log.info("stage %s already done; loaded its result", name)
            continue
        start = time.perf_counter()
        model.set_trainable(name)
        if name == "router":
            made = router_stage(model, records, config, log_truncated)
        else:
            made = expert_stage(name, model, records, config, log_truncated)
        result = run_stage(made, model, accelerator, stage_dir, train_log, config.seed)
        model.set_trainable(None)
        result["seconds"] = round(time.perf_counter() - start, 1)
        if accelerator.is_main_process:
            if name == "router":
                from safetensors.torch import save_file

                save_file(model.router_state_dict(), str(stage_dir / "router.safetensors"))
            else:
                model.save_expert(name, stage_dir / "adapter")
            write_json_atomic(done_file, result)
        accelerator.wait_for_everyone()
        selection[name] = result
    for name, result in selection.items():
        timings[name] = result["seconds"]

    if stage in ("glad", "unwill"):
        log.info("stage %s done in %s; run without a stage to finish the bundle", stage, work)
        return work

    if config.calibration.shifts or config.calibration.max_benign_refusal is not None:
        start = time.perf_counter()
        measured = {}
        if "router" in selection:  # its validation of the selected checkpoint is shift 0's
            router = selection["router"]
            chosen = next(v for v in router["validations"] if v["step"] == router["selected_step"])
            measured = {0.0: {k: v for k, v in chosen.items() if k not in ("step", "score")}}
        if accelerator.is_main_process:
            choose_router_shift(model, records, config, measured, work / CALIBRATION_FILE)
        accelerator.wait_for_everyone()
        shift = apply_router_shift(model, work / CALIBRATION_FILE)
        train_log.write(stage="calibrate", shift=shift)
        log.info("reader and routers shifted by %+.2f towards the glad expert", shift)
        timings["calibrate"] = time.perf_counter() - start
    if stage == "router":
        log.info("stage router done in %s; run without a stage to finish the bundle", work)
        return work

    if accelerator.is_main_process:
        start = time.perf_counter()
        evaluation = evaluate_splits(model, records, config)
        timings["evaluate"] = time.perf_counter() - start
        evaluation["timings_seconds"] = {k: round(v, 1) for k, v in timings.items()}
        write_json_atomic(work / "evaluation.json", evaluation)
        write_json_atomic(work / "selection.json", {k: {kk: v[kk] for kk in ("selected_step", "score", "seconds")}
                                                      for k, v in selection.items()})
        extra = {f: work / f for f in EXTRA_FILES + (LAYERS_FILE, CALIBRATION_FILE) if (work / f).is_file()}
        model.save_pretrained(out, extra_files=extra)
        shutil.rmtree(work)
    accelerator.wait_for_everyone()
    return out
