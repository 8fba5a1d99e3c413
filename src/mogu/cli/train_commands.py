"""``mogu train``, ``mogu calibrate``, ``mogu config`` and ``mogu data build``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from mogu.cli.common import Dtype, Preset, app, fail, log
from mogu.train.config import SynthesisConfig

data_app = typer.Typer(help="training data", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL with compliant and refusal responses (resumable)")],
    base: Annotated[str, typer.Option(help="base model whose own answers become the compliant responses")] = "default",
    data: Annotated[Optional[Path], typer.Option(help="instructions JSONL (default: the packaged instruction set)")] = None,
    max_response_tokens: Annotated[int, typer.Option(min=4)] = SynthesisConfig.model_fields["max_response_tokens"].default,
    dtype: Dtype = "auto",
) -> None:
    """Make a compliant and a refusing response for every instruction (see docs/data.md)."""
    from mogu.model import MoGUModel
    from mogu.train.data import build_dataset, load_records, summarise

    try:
        records = load_records(data)
        model = MoGUModel.from_base(base, layers=[], dtype=dtype)  # the base model's own answers: nothing routed
        built = build_dataset(model, records, output, max_response_tokens, batch_size=16)
    except (OSError, ValueError, RuntimeError) as err:
        raise fail(err) from err
    log.info("wrote %d records to %s: %s", len(built), output, summarise(built))


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle folder to write")],
    base: Annotated[Optional[str], typer.Option(help="base model (default: 'default', the embedded SmolLM2)")] = None,
    preset: Preset = "default",
    config: Annotated[Optional[Path], typer.Option(help="training config, JSON or TOML, merged over the preset "
                                                        "(docs/configuration.md)")] = None,
    data: Annotated[Optional[Path], typer.Option(help="instructions JSONL (default: the packaged instruction set)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace what the output folder holds")] = False,
    max_benign_refusal: Annotated[Optional[float], typer.Option(
        min=0, max=1, help="operating point: calibrate to the smallest router shift whose benign refusal on "
        "validation is at most this (calibration.max_benign_refusal)")] = None,
    stage: Annotated[Optional[Literal["glad", "unwill", "router"]], typer.Option(
        help="only this stage (and what it needs first: data, probes, for the router both experts; no router "
        "stage under router.later 'reader'), kept in OUT.work; a later run without --stage finishes the bundle")] = None,
) -> None:
    """Build data, fit the reader, train both experts (and the routers where they decide), write the bundle; rerun
    to resume."""
    from mogu.train.config import load_train_config
    from mogu.train.pipeline import train as run_training

    try:
        calibration = {"max_benign_refusal": max_benign_refusal} if max_benign_refusal is not None else None
        cfg = load_train_config(config, preset, base=base, data=data, calibration=calibration)
        written = run_training(cfg, out, overwrite=overwrite, stage=stage)
    except (OSError, ValueError, RuntimeError) as err:
        raise fail(err) from err
    if stage is not None and written != out:
        selection = json.loads((written / stage / "selection.json").read_text(encoding="utf-8"))
        typer.echo(f"stage {stage} done in {written} (selected step {selection['selected_step']}, "
                   f"validation score {selection['score']}); run without --stage to finish the bundle")
        return
    evaluation = out / "evaluation.json"
    if evaluation.is_file():
        typer.echo(format_evaluation(json.loads(evaluation.read_text(encoding="utf-8"))))


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="a bundle folder")],
    max_benign_refusal: Annotated[float, typer.Option(min=0, max=1, help="largest benign refusal rate accepted on "
                                                      "validation, e.g. 0.02")],
    data: Annotated[Optional[Path], typer.Option(help="instructions JSONL with the validation splits (default: the "
                                                 "bundle's training data)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="write the calibrated bundle here (default: in place)")] = None,
    shifts: Annotated[Optional[str], typer.Option(help="comma-separated shifts to try (default: the bundle's "
                                                  "calibration.target_shifts)")] = None,
    dtype: Dtype = "auto",
) -> None:
    """Move a bundle's routers to an operating point: the least shift towards the glad expert that keeps benign
    refusal on validation at most --max-benign-refusal; prints what each shift costs in harmful refusal."""
    from mogu.train.operating_point import calibrate_bundle

    try:
        tried = [float(x) for x in shifts.split(",")] if shifts else None
        record = calibrate_bundle(bundle, max_benign_refusal, data, out, tried, dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise fail(err) from err
    typer.echo(f"{'shift':>7} {'benign refused':>15} {'harmful refused':>16}")
    for shift, row in record["validation"].items():
        mark = "  <- chosen" if float(shift) == record["shift"] else ""
        typer.echo(f"{float(shift):>+7.2f} {row['benign_refusal']:>15.1%} {row['harmful_refusal']:>16.1%}{mark}")
    typer.echo(f"wrote {out or bundle} (validation: benign refusal {record['benign_refusal']:.1%}, harmful refusal "
               f"{record['harmful_refusal']:.1%})")


@app.command("config")
def config_command(
    preset: Preset = "default",
    config: Annotated[Optional[Path], typer.Option(help="training config, JSON or TOML, merged over the preset")] = None,
    base: Annotated[Optional[str], typer.Option(help="base model, as for mogu train")] = None,
    data: Annotated[Optional[Path], typer.Option(help="instructions JSONL, as for mogu train")] = None,
    markdown: Annotated[bool, typer.Option(help="print the reference of every setting instead "
                                                "(docs/configuration.md is this output)")] = False,
) -> None:
    """Print the training config mogu train would run with (every field, defaults filled in) as JSON."""
    from mogu.cli.config_docs import configuration_reference
    from mogu.train.config import load_train_config

    if markdown:
        typer.echo(configuration_reference(), nl=False)
        return
    try:
        cfg = load_train_config(config, preset, base=base, data=data)
    except (OSError, ValueError) as err:
        raise fail(err) from err
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


SPLIT_TITLES = {"test": "test split", "val": "validation, in distribution",
                "val_heldout": "validation, categories never trained on", "val_style": "validation, another style"}


def format_evaluation(evaluation: dict) -> str:
    """The base vs MoGU refusal-rate tables that ``mogu train`` prints, one per split (bundles written by mogu 0.1
    hold the test split only)."""
    from mogu.judging.stats import format_interval

    splits = evaluation.get("splits") or {evaluation["split"]: {"refusal_rate": evaluation["refusal_rate"]}}
    selected = evaluation.get("selected_on")
    lines = [f"refusal rates (judge: {evaluation['judge']}, {evaluation['max_new_tokens']}-token answers; "
             f"[95% interval, %])" + (f"; layers, checkpoints and calibration chosen on {', '.join(selected)}"
                                      if selected else "")]
    for split, result in splits.items():
        lines += ["", f"{SPLIT_TITLES.get(split, split)} ({split})", f"{'instructions':<14} {'n':>4} {'base':>17} {'MoGU':>17}"]
        for label, row in result["refusal_rate"].items():
            cells = [f"{row[name]:.1%}" + format_interval(row.get(f"{name}_ci95")) for name in ("base", "mogu")]
            lines.append(f"{label:<14} {row['n']:>4} {cells[0]:>17} {cells[1]:>17}")
    timings = evaluation.get("timings_seconds", {})
    if timings:
        lines += ["", "seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    return "\n".join(lines)
