"""The ``mogu`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional, get_args

import typer

from mogu import __version__
from mogu.model.config import DtypeName, Mode as ModeName
from mogu.serve.settings import RequestMode
from mogu.train.config import PRESETS, SynthesisConfig

app = typer.Typer(help="MoGU: make an open chat LLM refuse malicious requests without refusing benign ones.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
log = logging.getLogger("mogu")

Preset = Annotated[str, typer.Option(help=f"starting point of the training config: {' | '.join(PRESETS)} "
                                     "(paper: MoGU as released; docs/training.md)")]
Target = Annotated[str, typer.Argument(help="a MoGU bundle folder, or a base model: 'default', a model folder, a .gguf file or a hub id")]
Dtype = Annotated[DtypeName, typer.Option(
    help="base model weights; auto: bfloat16 on a GPU that supports it or a CPU with AMX, else float32")]


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(err: Exception) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _load(target: str, chat_template: Optional[Path] = None, dtype: DtypeName = "auto"):
    from mogu.model import MoGUModel

    model = MoGUModel.load(target, dtype=dtype)
    if chat_template is not None:
        model.config.chat_template = chat_template.read_text(encoding="utf-8")
    return model


@app.command()
def info(target: Target, dtype: Dtype = "auto") -> None:
    """Architecture, routed projections and parameter counts of a bundle or a base model."""
    from mogu.model.config import RouterConfig
    from mogu.model import MoGUModel
    from mogu.model.bundle_files import is_bundle
    from mogu.model.router import Router

    try:
        bundle = is_bundle(target)
        model = MoGUModel.load(target, fold_routers=False, dtype=dtype) if bundle else _load(target, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise _fail(err) from err
    cfg = model.config
    typer.echo(f"base model     {cfg.base.source} ({cfg.base.architecture}, model_type {cfg.base.model_type})")
    typer.echo(f"fingerprint    {cfg.base.fingerprint[:16]}")
    projection = cfg.target_modules[0].split(f".{cfg.layers[0]}.", 1)[-1]  # the name inside a decoder layer
    typer.echo(f"routed layers  {' '.join(map(str, cfg.layers))} ({projection})")
    typer.echo(f"experts        r {cfg.expert.r}, alpha {cfg.expert.alpha:g}, dropout {cfg.expert.dropout:g}")
    typer.echo(f"routed tokens  {cfg.routed_tokens}")
    counts = model.parameter_counts()
    first = f"one reader, {counts['reader']:,} parameters" if "reader" in counts else "each layer's router"
    typer.echo(f"first decision {first} (router.first)")
    typer.echo(f"{'router shape':<14} {'base':>13} {'glad':>10} {'unwill':>10} {'routers':>12}")
    shapes = [cfg.router.shape] if bundle else ["paper", "linear"]
    for shape in shapes:
        # the paper's shape reads its own layer only (RouterConfig)
        reads = "own" if shape == "paper" else cfg.router.reads
        routers = sum(
            p.numel() for layer in model.layers
            for p in Router(layer.in_features, RouterConfig(shape=shape, reads=reads),
                            pieces=len(layer.reads) if reads == "stack" else 1).parameters()
        )
        typer.echo(f"{shape:<14} {counts['base']:>13,} {counts['expert_glad']:>10,} {counts['expert_unwill']:>10,} "
                   f"{routers:>12,}")


def _decoding(**kwargs):
    from pydantic import ValidationError

    from mogu.model.config import DecodingConfig

    try:
        return DecodingConfig(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        raise _fail(ValueError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")) from err


MaxNew = Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate at most")]
Temperature = Annotated[float, typer.Option(help="0 = greedy")]
TopP = Annotated[float, typer.Option("--top-p")]
TopK = Annotated[int, typer.Option("--top-k", help="0 = off")]
Seed = Annotated[Optional[int], typer.Option(help="seed for sampling")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="stop string (repeatable)")]
Routed = Annotated[Optional[int], typer.Option("--routed-tokens", help="tokens decoded with routing (default: the bundle's)")]
Mode = Annotated[ModeName, typer.Option(help="mogu, or an ablation")]
Template = Annotated[Optional[Path], typer.Option("--chat-template", help="Jinja chat template file for models without one")]
EngineUrl = Annotated[Optional[str], typer.Option(
    "--engine", help="URL of an OpenAI-compatible engine (vLLM) serving the plain base model: it writes each answer "
    "after the routed tokens (docs/deploy.md)")]
EngineModel = Annotated[Optional[str], typer.Option("--engine-model", help="the engine's model name (default: its only one)")]
EngineKey = Annotated[Optional[str], typer.Option("--engine-api-key", envvar="MOGU_ENGINE_API_KEY", help="the engine's API key")]


def _engine_config(url: Optional[str], model: Optional[str], api_key: Optional[str]):
    """The engine settings of --engine/--engine-model/--engine-api-key, or None without --engine."""
    from pydantic import ValidationError

    from mogu.engine import EngineConfig

    if url is None:
        if model is not None or api_key is not None:
            raise _fail(ValueError("--engine-model and --engine-api-key need --engine URL"))
        return None
    try:
        return EngineConfig(url=url, model=model, api_key=api_key)
    except ValidationError as err:
        raise _fail(ValueError(f"--engine: {err.errors()[0]['msg']}")) from err


@app.command()
def generate(
    target: Target,
    prompts: Annotated[Optional[list[str]], typer.Argument(help="prompts to answer")] = None,
    input: Annotated[Optional[Path], typer.Option(help="JSONL file: one {'id', 'prompt' | 'messages'} per line")] = None,
    output: Annotated[Optional[Path], typer.Option(help="JSONL answers; an existing file is resumed")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
    seed: Seed = None,
    stop: Stop = None,
    routed_tokens: Routed = None,
    mode: Mode = "mogu",
    show_gates: Annotated[bool, typer.Option(help="include the router weights of the routed tokens")] = False,
    chat_template: Template = None,
    dtype: Dtype = "auto",
    engine: EngineUrl = None,
    engine_model: EngineModel = None,
    engine_api_key: EngineKey = None,
) -> None:
    """Answer prompts given on the command line or in a JSONL file."""
    from mogu.cli.files import answer_file, gate_summary
    from mogu.engine.handover import EngineGenerator

    if bool(prompts) == bool(input):
        raise _fail(ValueError("give prompts as arguments or --input FILE (not both)"))
    engine_config = _engine_config(engine, engine_model, engine_api_key)
    decoding = _decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                         stop=stop or [], routed_tokens=routed_tokens, mode=mode,
                         return_gates=show_gates)
    try:
        model = _load(target, chat_template, dtype)
        run = EngineGenerator(model, engine_config) if engine_config is not None else model.generate
        if input is not None:
            written = answer_file(model, input, output, decoding, batch_size, run)
            log.info("wrote %d answers to %s", written, output or "stdout")
            return
        for start in range(0, len(prompts), batch_size):
            for result in run(prompts[start : start + batch_size], decoding):
                typer.echo(result.text)
                if show_gates and result.gates is not None:
                    typer.echo(gate_summary(result.gates))
                typer.echo("")
    except (OSError, ValueError, RuntimeError) as err:
        raise _fail(err) from err


data_app = typer.Typer(help="training data", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL with compliant and refusal responses (resumable)")],
    base: Annotated[str, typer.Option(help="base model whose own answers become the compliant responses")] = "default",
    data: Annotated[Optional[Path], typer.Option(help="instructions JSONL (default: the packaged seed data)")] = None,
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
        raise _fail(err) from err
    log.info("wrote %d records to %s: %s", len(built), output, summarise(built))


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle folder to write")],
    base: Annotated[Optional[str], typer.Option(help="base model (default: 'default', the embedded SmolLM2)")] = None,
    preset: Preset = "default",
    config: Annotated[Optional[Path], typer.Option(help="training config, JSON or TOML, merged over the preset "
                                                        "(docs/configuration.md)")] = None,
    data: Annotated[Optional[Path], typer.Option(help="instructions JSONL (default: the packaged seed data)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace what the output folder holds")] = False,
    max_benign_refusal: Annotated[Optional[float], typer.Option(
        min=0, max=1, help="operating point: calibrate to the smallest router shift whose benign refusal on "
        "validation is at most this (calibration.max_benign_refusal)")] = None,
    stage: Annotated[Optional[Literal["glad", "unwill", "router"]], typer.Option(
        help="only this stage (and what it needs first: data, layers, for the router both experts), kept in "
        "OUT.work; a later run without --stage finishes the bundle")] = None,
) -> None:
    """Build data, train both experts and the routers, write the bundle; rerun to resume."""
    from mogu.train.config import load_train_config
    from mogu.train.pipeline import train as run_training

    try:
        calibration = {"max_benign_refusal": max_benign_refusal} if max_benign_refusal is not None else None
        cfg = load_train_config(config, preset, base=base, data=data, calibration=calibration)
        written = run_training(cfg, out, overwrite=overwrite, stage=stage)
    except (OSError, ValueError, RuntimeError) as err:
        raise _fail(err) from err
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
        raise _fail(err) from err
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
        raise _fail(err) from err
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
    seed_split: Annotated[Optional[str], typer.Option("--seed-split", help="add the packaged seed suites of this split (test)")] = None,
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
    """Refusal rates of defenses on harmful and benign suites: report.json, report.md, plots (see docs/EVAL.md)."""
    from mogu.eval.report import format_markdown
    from mogu.eval.runner import build_suites, evaluate, parse_defense_options, parse_judge_spec
    from mogu.model.bundle_files import is_bundle

    decoding = _decoding(max_new_tokens=max_new_tokens)
    engine_config = _engine_config(engine, engine_model, engine_api_key)
    try:
        suites = build_suites(harmful or [], benign or [], seed_split, attack or [], attack_prompts or [], seed)
        names = defense or ("none,mogu" if is_bundle(target) else "none")
        report = evaluate(target, suites, names, parse_judge_spec(judge), decoding, out, batch_size=batch_size,
                          defense_options=parse_defense_options(defense_arg or []), rejudge=rejudge, seed=seed,
                          chat_template=chat_template.read_text(encoding="utf-8") if chat_template else None,
                          dtype=dtype, mogu_shifts=_shifts(mogu_shifts), engine=engine_config)
    except (OSError, ValueError, RuntimeError) as err:
        raise _fail(err) from err
    typer.echo(format_markdown(report))


@app.command()
def chat(
    target: Target,
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    show_gates: Annotated[bool, typer.Option(help="print the mean glad/unwilling weight of each routed token")] = False,
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
    seed: Seed = None,
    chat_template: Template = None,
    dtype: Dtype = "auto",
) -> None:
    """Interactive multi-turn chat that streams the answer (empty line or Ctrl-D ends)."""
    from mogu.cli.files import gate_summary

    decoding = _decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    try:
        model = _load(target, chat_template, dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise _fail(err) from err
    history = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        if show_gates:
            [result] = model.generate([history], decoding.model_copy(update={"return_gates": True}),
                                      on_text=lambda _row, delta: typer.echo(delta, nl=False))
            answer = result.text
            typer.echo("")
            if result.gates is not None:
                typer.echo(gate_summary(result.gates))
        else:
            answer = ""
            for piece in model.stream(history, decoding):
                answer += piece
                typer.echo(piece, nl=False)
            typer.echo("")
        history.append({"role": "assistant", "content": answer})



@app.command()
def serve(
    target: Target,
    host: Annotated[str, typer.Option(help="interface to bind; anything but loopback exposes the model")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="MOGU_API_KEY", help="require 'Authorization: Bearer KEY'")] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="name in /v1/models (default: the target's)")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, help="requests decoded together")] = 8,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", min=0, help="wait to gather a batch")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="waiting requests beyond which: 429")] = 64,
    max_tokens_limit: Annotated[int, typer.Option("--max-tokens-limit", min=1, help="largest max_tokens allowed")] = 1024,
    max_prompt_tokens: Annotated[Optional[int], typer.Option("--max-prompt-tokens", min=1, help="longest prompt (default: the context)")] = None,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024, help="largest request body: 413")] = 1 << 20,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads (default: torch's)")] = None,
    temperature: Annotated[float, typer.Option(
        min=0.0, max=2.0, help="for requests that give none; 0 = greedy, as the refusal rates were measured")] = 0.0,
    allow_modes: Annotated[str, typer.Option(
        "--allow-modes", help=f"comma-separated mogu.mode values clients may request ({', '.join(get_args(RequestMode))}); "
        "all but mogu switch the defence off")] = "mogu",
    chat_template: Template = None,
    dtype: Dtype = "auto",
    engine: EngineUrl = None,
    engine_model: EngineModel = None,
    engine_api_key: EngineKey = None,
) -> None:
    """Serve an OpenAI-compatible API: POST /v1/chat/completions, GET /v1/models, GET /health."""
    import asyncio

    from mogu.engine import EngineClient
    from mogu.engine.client import check_engine
    from mogu.serve import ServeConfig, run_server, served_name

    engine_config = _engine_config(engine, engine_model, engine_api_key)
    try:
        settings = ServeConfig(host=host, port=port, api_key=api_key, model_name=model_name or served_name(target),
                               max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                               max_tokens_limit=max_tokens_limit, max_prompt_tokens=max_prompt_tokens,
                               max_body_bytes=max_body_bytes, torch_threads=threads, temperature=temperature,
                               allowed_modes=[mode.strip() for mode in allow_modes.split(",") if mode.strip()])
        model = _load(target, chat_template, dtype)
        client = None
        if engine_config is not None:
            client = EngineClient(engine_config, asyncio.run(check_engine(engine_config, model.tokenizer)))
    except (OSError, ValueError, RuntimeError) as err:
        raise _fail(err) from err
    if client is None:
        run_server(model, settings)
    else:
        run_server(model, settings, engine=client)
