"""``mogu serve``."""

from __future__ import annotations

from typing import Annotated, Optional, get_args

import typer

from mogu.cli.common import (
    Dtype,
    EngineKey,
    EngineModel,
    EngineUrl,
    Target,
    Template,
    app,
    engine_settings,
    fail,
    load_target,
)
from mogu.serve.settings import RequestMode


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

    engine_config = engine_settings(engine, engine_model, engine_api_key)
    try:
        settings = ServeConfig(host=host, port=port, api_key=api_key, model_name=model_name or served_name(target),
                               max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                               max_tokens_limit=max_tokens_limit, max_prompt_tokens=max_prompt_tokens,
                               max_body_bytes=max_body_bytes, torch_threads=threads, temperature=temperature,
                               allowed_modes=[mode.strip() for mode in allow_modes.split(",") if mode.strip()])
        model = load_target(target, chat_template, dtype)
        client = None
        if engine_config is not None:
            client = EngineClient(engine_config, asyncio.run(check_engine(engine_config, model.tokenizer)))
    except (OSError, ValueError, RuntimeError) as err:
        raise fail(err) from err
    if client is None:
        run_server(model, settings)
    else:
        run_server(model, settings, engine=client)
