"""Random-stream state saved with checkpoints, so that a resumed run draws what an uninterrupted one would.

LoRA dropout draws from torch's global random stream during the expert and
router steps. A run killed and started again restores the stream from the
checkpoint it resumes from, or from the last checkpoint of a finished stage it
skips (written at the stage's last step, after which the stage draws
nothing), as the uninterrupted run had it there; without that, a resumed
run's later dropout masks (and so its bundle) would differ from an
uninterrupted run's. Under ``accelerate launch`` every process has its own
stream; each one's state is kept (gathered to the main process, which writes
the checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file

RNG_FILE = "rng.safetensors"  # in a stage's checkpoint folder


def _state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def gather_rng_states(accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Every process's random-stream state, keyed ``"<stream>.rank<N>"`` (call on every process)."""
    states = gather_object([_state()]) if accelerator.num_processes > 1 else [_state()]
    return {f"{stream}.rank{rank}": value for rank, state in enumerate(states) for stream, value in state.items()}


def restore_rng_state(path: Path, accelerator: Accelerator) -> None:
    """Set this process's random stream from ``path`` (``gather_rng_states`` saved as safetensors).

    Checkpoints written before the state was saved have no file, and a file from a run with fewer processes
    has no entry for this one: those resumed runs draw anew, as they always did.
    """
    if not path.is_file():
        return
    suffix = f".rank{accelerator.process_index}"
    mine = {k[: -len(suffix)]: v for k, v in load_file(str(path)).items() if k.endswith(suffix)}
    if "cpu" not in mine:
        return
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])
