"""``mogu eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mogu.cli.common import (
    Dtype,
    EngineKey,
    EngineModel,
    EngineUrl,
    MaxNew,
    Target,
    Template,
    app,
    decoding_config,
    engine_settings,
    fail,
)


def _shifts(spec: str) -> list[float]:
    """``--mogu-shifts``: comma-separated numbers."""
    try:
        return [float(part) for part in spec.split(",") if part.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"{spec!r}: expected comma-separated numbers, e.g. -1,-0.5,0.5,1", param_hint="--mogu-shifts") from err


@app.command("eval")
def eval_command(
    target: Target,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (generations are cached there; rerun to resume)")],
    harmful: Annotated[Optional[list[str]], typer.Option("--harmful", help="harmful suite PATH[:name=N][:column=C][:where=K=V][:limit=N] (repeatable)")] = None,
    benign: Annotated[Optional[list[str]], typer.Option("--benign", help="benign suite, same spec (repeatable)")] = None,
    seed_split: Annotated[Optional[str], typer.Option("--seed-split", help="add the packaged instruction set's suites "
                                                      "of these splits, comma-separated: test, val, val_heldout, val_style")] = None,
    seed_limit: Annotated[Optional[int], typer.Option("--seed-limit", min=1, help="sample each --seed-split suite to "
                                                      "this many prompts")] = None,
    attack: Annotated[Optional[list[str]], typer.Option("--attack", help="also run every harmful suite wrapped by: none | prefix | refusal-suppression | template:PATH[:n=N] | suffix:PATH[:n=N] (repeatable)")] = None,
    attack_prompts: Annotated[Optional[list[str]], typer.Option("--attack-prompts", help="ready-made attack prompts FILE[:method=M] (repeatable)")] = None,
    defense: Annotated[Optional[str], typer.Option("--defense", help="comma-separated: none, self-reminder, icd, sft, safedecoding, detect-input, mogu-fixed, mogu (default: none,mogu for a bundle, none otherwise)")] = None,
    defense_arg: Annotated[Optional[list[str]], typer.Option("--defense-arg", help="defense setting NAME.KEY=VALUE, e.g. safedecoding.alpha=2 (repeatable)")] = None,
    mogu_shifts: Annotated[str, typer.Option("--mogu-shifts", help="comma-separated router shifts, e.g. -1,-0.5,0.5,1,2: also evaluate mogu with its routers moved by each towards the glad expert (defenses mogu@+0.5, ...), a curve on the Pareto plot")] = "",
    judge: Annotated[str, typer.Option(help="keyword | model:PATH | endpoint:URL,model=NAME (key from $MOGU_JUDGE_API_KEY)")] = "keyword",
    max_new_tokens: MaxNew = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    seed: Annotated[int, typer.Option(help="seed of the suite samples (limit=) and of the gate sample")] = 0,
    rejudge: Annotated[bool, typer.Option(help="judge the saved answers again; generate nothing")] = False,
    chat_template: Template = None,
    dtype: Dtype = "auto",
    engine: EngineUrl = None,
    engine_model: EngineModel = None,
    engine_api_key: EngineKey = None,
) -> None:
    """Refusal rates of defenses on harmful and benign suites: report.json, report.md, plots (see docs/evaluation.md)."""
    from mogu.eval.report import format_markdown
    from mogu.eval.runner import build_suites, evaluate
    from mogu.eval.specs import parse_defense_options, parse_judge_spec
    from mogu.model.bundle_files import is_bundle

    decoding = decoding_config(max_new_tokens=max_new_tokens)
    engine_config = engine_settings(engine, engine_model, engine_api_key)
    try:
        suites = build_suites(harmful or [], benign or [], seed_split, attack or [], attack_prompts or [], seed,
                              seed_limit)
        names = defense or ("none,mogu" if is_bundle(target) else "none")
        report = evaluate(target, suites, names, parse_judge_spec(judge), decoding, out, batch_size=batch_size,
                          defense_options=parse_defense_options(defense_arg or []), rejudge=rejudge, seed=seed,
                          chat_template=chat_template.read_text(encoding="utf-8") if chat_template else None,
                          dtype=dtype, mogu_shifts=_shifts(mogu_shifts), engine=engine_config)
    except (OSError, ValueError, RuntimeError) as err:
        raise fail(err) from err
    typer.echo(format_markdown(report))
