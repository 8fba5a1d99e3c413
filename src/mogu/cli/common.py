"""What the ``mogu`` commands share: the Typer app, option types and small helpers (errors, loading, decoding
and engine settings from options)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mogu import __version__
from mogu.model.config import DtypeName
from mogu.model.config import Mode as ModeName
from mogu.train.config import PRESETS

app = typer.Typer(help="MoGU: make an open chat LLM refuse malicious requests without refusing benign ones.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
log = logging.getLogger("mogu")

Preset = Annotated[str, typer.Option(help=f"starting point of the training config: {' | '.join(PRESETS)} "
                                     "(paper: MoGU as released; docs/training.md)")]
Target = Annotated[str, typer.Argument(help="a MoGU bundle folder, or a base model: 'default', a model folder, a .gguf file or a hub id")]
Dtype = Annotated[DtypeName, typer.Option(
    help="base model weights; auto: bfloat16 on a GPU that supports it or a CPU with AMX, else float32")]


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


def fail(err: Exception) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def load_target(target: str, chat_template: Optional[Path] = None, dtype: DtypeName = "auto"):
    from mogu.model import MoGUModel

    model = MoGUModel.load(target, dtype=dtype)
    if chat_template is not None:
        model.config.chat_template = chat_template.read_text(encoding="utf-8")
    return model


def decoding_config(**kwargs):
    from pydantic import ValidationError

    from mogu.model.config import DecodingConfig

    try:
        return DecodingConfig(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        raise fail(ValueError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")) from err


def engine_settings(url: Optional[str], model: Optional[str], api_key: Optional[str]):
    """The engine settings of --engine/--engine-model/--engine-api-key, or None without --engine."""
    from pydantic import ValidationError

    from mogu.engine import EngineConfig

    if url is None:
        if model is not None or api_key is not None:
            raise fail(ValueError("--engine-model and --engine-api-key need --engine URL"))
        return None
    try:
        return EngineConfig(url=url, model=model, api_key=api_key)
    except ValidationError as err:
        raise fail(ValueError(f"--engine: {err.errors()[0]['msg']}")) from err
