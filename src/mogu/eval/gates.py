"""The router readout of an evaluation: the mean glad weight per routed layer at the first routed token, on a
seeded sample of harmful and benign prompts (``generations/gates.json``, ``gates.png``)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mogu.eval.suites import Prompt, Suite, prompt_key
from mogu.io.files import write_json_atomic
from mogu.model.config import DecodingConfig


def gate_summary(model, suites: Sequence[Suite], sample: int, seed: int, batch_size: int, cache: Path) -> dict[str, Any]:
    """Mean glad weight per routed layer at the first routed token, for a seeded sample per kind (cached)."""
    rng = random.Random(seed)
    chosen: dict[str, list[Prompt]] = {}
    for kind in ("harmful", "benign"):
        prompts = [p for s in suites if s.kind == kind for p in s]
        chosen[kind] = [prompts[i] for i in sorted(rng.sample(range(len(prompts)), min(sample, len(prompts))))]
    keys = {kind: [prompt_key(p) for p in ps] for kind, ps in chosen.items()}
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("keys") == keys:
            return saved["gates"]
    decoding = DecodingConfig(max_new_tokens=1, routed_tokens=1, mode="mogu", return_gates=True)
    result: dict[str, Any] = {"layers": list(model.config.layers), "token": 0, "n": {}}
    for kind, prompts in chosen.items():
        rows = []
        for start in range(0, len(prompts), batch_size):
            for g in model.generate([p.text for p in prompts[start : start + batch_size]], decoding):
                rows.append(g.gates[0, :, 1])
        result["n"][kind] = len(rows)
        result[kind] = [round(float(v), 5) for v in sum(rows) / len(rows)] if rows else None
    write_json_atomic(cache, {"keys": keys, "gates": result})
    return result
