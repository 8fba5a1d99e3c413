"""Which positions of a training sequence choose its response: the label convention shared by training and routing."""

from __future__ import annotations

import torch

IGNORE = -100  # the label of a prompt or padding position


def decision_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose output chooses a response token: the last prompt token up to the second-last response token."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask
