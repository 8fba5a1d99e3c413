"""What produced an output: package versions and the git commit, saved beside every output."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mogu import __version__


def git_commit(path: Path | None = None) -> str | None:
    """Commit of the source tree mogu runs from, if it is a git checkout."""
    here = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """Versions that produced an output, saved beside it."""
    import peft
    import torch
    import transformers

    return {
        "mogu": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def resolved_dict(config: BaseModel) -> dict[str, Any]:
    """The config with every default filled in, plus provenance."""
    return {"config": config.model_dump(mode="json"), "provenance": provenance()}
