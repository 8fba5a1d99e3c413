"""Random-stream state saved with checkpoints, so that a resumed run draws what an uninterrupted one would.

LoRA dropout draws from torch's global random stream during the expert and
router steps. A run killed and started again restores, with a stage's
checkpoint or with a finished stage it skips, the stream as the uninterrupted
run had it at that point; without that, a resumed run's later dropout masks
(and so its bundle) would differ from an uninterrupted run's. Under
``accelerate launch`` every process has its own stream; each one's state is
kept (gathered to the main process, which writes the file).
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

RNG_FILE = "rng.safetensors"  # in a stage's checkpoint folder, and in a finished stage's folder


def _state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def gather_rng_states(accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Every process's random-stream state, keyed ``"<stream>.rank<N>"`` (call on every process)."""
    states = gather_object([_state()]) if accelerator.num_processes > 1 else [_state()]
    return {f"{stream}.rank{rank}": value for rank, state in enumerate(states) for stream, value in state.items()}


def save_rng_states(path: Path, states: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in states.items()}, str(path))


def restore_rng_state(path: Path, accelerator: Accelerator) -> bool:
    """Set this process's random stream from ``path`` (written by ``save_rng_states``); False if there is none.

    Work folders written before the state was saved have no file: their resumed runs draw anew, as they did.
    """
    if not path.is_file():
        return False
    suffix = f".rank{accelerator.process_index}"
    mine = {k[: -len(suffix)]: v for k, v in load_file(str(path)).items() if k.endswith(suffix)}
    if "cpu" not in mine:
        return False
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])
    return True
