"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors as safetensors (contiguous, on the CPU) so that a crash leaves either the old file or the new one."""
    from safetensors.torch import save_file  # here, so that the JSON helpers do not load torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
