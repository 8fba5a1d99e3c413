"""``mogu info``, ``mogu generate`` and ``mogu chat``."""

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
    Mode,
    Routed,
    Seed,
    Stop,
    Target,
    Temperature,
    Template,
    TopK,
    TopP,
    app,
    decoding_config,
    engine_settings,
    fail,
    load_target,
    log,
)


@app.command()
def info(target: Target, dtype: Dtype = "auto") -> None:
    """Architecture, routed projections and parameter counts of a bundle or a base model."""
    from mogu.model import MoGUModel
    from mogu.model.bundle_files import is_bundle
    from mogu.model.config import RouterConfig
    from mogu.model.router import Router

    try:
        bundle = is_bundle(target)
        model = MoGUModel.load(target, fold_routers=False, dtype=dtype) if bundle else load_target(target, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise fail(err) from err
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
        raise fail(ValueError("give prompts as arguments or --input FILE (not both)"))
    engine_config = engine_settings(engine, engine_model, engine_api_key)
    decoding = decoding_config(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                         stop=stop or [], routed_tokens=routed_tokens, mode=mode,
                         return_gates=show_gates)
    try:
        model = load_target(target, chat_template, dtype)
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
        raise fail(err) from err


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

    decoding = decoding_config(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    try:
        model = load_target(target, chat_template, dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise fail(err) from err
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
