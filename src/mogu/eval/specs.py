"""What ``mogu eval`` reads from its options: judge specifications and defense settings."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from mogu.judging.keyword import RefusalJudge
from mogu.judging.model_judges import EndpointJudge, ModelJudge
from mogu.judging.verdict import Judge

JUDGE_API_KEY_ENV = "MOGU_JUDGE_API_KEY"


class EvalError(ValueError):
    """Bad evaluation inputs, or an output folder that does not fit this run."""


def parse_judge_spec(spec: str) -> Judge:
    """``keyword``, ``model:PATH[,mode=M][,with_request=true]`` or ``endpoint:URL,model=NAME``.

    The endpoint's API key, if it needs one, is read from ``$MOGU_JUDGE_API_KEY``.
    """
    if spec == "keyword":
        return RefusalJudge()
    kind, sep, rest = spec.partition(":")
    if kind not in ("model", "endpoint") or not sep or not rest:
        raise EvalError(f"judge spec {spec!r}: expected keyword, model:PATH or endpoint:URL,model=NAME")
    head, *pairs = rest.split(",")
    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key or not value:
            raise EvalError(f"judge spec {spec!r}: {pair!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    if kind == "model":
        unknown = set(options) - {"mode", "with_request"}
        if unknown:
            raise EvalError(f"judge spec {spec!r}: unknown option(s) {sorted(unknown)}; model judges take mode=, with_request=")
        return ModelJudge(head, mode=options.get("mode", "auto"),  # type: ignore[arg-type]
                          with_request=options.get("with_request", "false").lower() in ("1", "true", "yes"))
    if set(options) != {"model"}:
        raise EvalError(f"judge spec {spec!r}: an endpoint judge takes exactly model=NAME")
    return EndpointJudge(head, options["model"], api_key=os.environ.get(JUDGE_API_KEY_ENV))


def parse_defense_options(args: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` items -> ``{NAME: {KEY: VALUE}}``; values are read as JSON when they parse."""
    options: dict[str, dict[str, Any]] = {}
    for arg in args:
        head, eq, raw = arg.partition("=")
        name, dot, key = head.partition(".")
        if not eq or not dot or not name or not key:
            raise EvalError(f"defense option {arg!r}: expected NAME.KEY=VALUE (e.g. safedecoding.alpha=2)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(name, {})[key] = value
    return options
