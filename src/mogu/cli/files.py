"""File-level helpers behind ``mogu generate --input``: JSONL prompts in, JSONL answers out, resumable."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from mogu.io.jsonl import JsonlError, append_jsonl, done_ids, field, read_jsonl
from mogu.model import MoGUModel
from mogu.model.chat import ChatInput
from mogu.model.config import DecodingConfig
from mogu.model.generation import Generation

log = logging.getLogger(__name__)


def read_prompts(path: Path) -> list[tuple[str, str | list[dict]]]:
    """(id, prompt or messages) per line; ids default to the line number and must be unique."""
    prompts, seen = [], set()
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        if "messages" in record:
            prompt = field(record, "messages", list, where)
        else:
            prompt = field(record, "prompt", str, where)
            if not prompt.strip():
                raise JsonlError(f"{where}: field 'prompt' is empty")
        key = str(field(record, "id", (str, int), where, required=False) or number)
        if key in seen:
            raise JsonlError(f"{where}: duplicate id {key!r}")
        seen.add(key)
        prompts.append((key, prompt))
    return prompts


def answer_file(model: MoGUModel, source: Path, output: Path | None, decoding: DecodingConfig, batch_size: int,
                generate: Callable[[list[ChatInput], DecodingConfig], list[Generation]] | None = None) -> int:
    """Answer every prompt in ``source``; with ``output``, skip ids already answered there.

    ``generate``: what answers a batch (default ``model.generate``; an engine hand-over, for one)."""
    generate = generate or model.generate
    prompts = read_prompts(source)
    skip = done_ids(output) if output is not None else set()
    todo = [(key, p) for key, p in prompts if key not in skip]
    if skip:
        log.info("resuming: %d of %d prompts already answered in %s", len(prompts) - len(todo), len(prompts), output)
    handle = output.open("a", encoding="utf-8") if output is not None else sys.stdout
    try:
        with tqdm(total=len(todo), desc="generating", unit="prompt", disable=output is None) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                for (key, prompt), result in zip(chunk, generate([p for _, p in chunk], decoding)):
                    record = {
                        "id": key,
                        "prompt": prompt,
                        "response": result.text,
                        "finish_reason": result.finish_reason,
                        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
                    }
                    if result.gates is not None:
                        record["gates"] = result.gates.tolist()
                    append_jsonl(handle, record)
                bar.update(len(chunk))
    finally:
        if output is not None:
            handle.close()
    return len(todo)


def gate_summary(gates: torch.Tensor) -> str:
    """One line per routed token: mean glad and unwilling weight over the routed layers."""
    rows = [f"  token {i + 1}: glad {g[:, 1].mean():.3f}  unwill {g[:, 0].mean():.3f}" for i, g in enumerate(gates)]
    return "router weights (mean over layers):\n" + "\n".join(rows)
