"""Linear probes: class-balanced, L2-regularised logistic regression fitted with L-BFGS.

Shared by the probes step (``train/probes.py``: layer choice and the first decision's reader), the router warm
start (``train/router_init.py``) and the detect-input baseline
(``eval/defenses/detect_input.py``).
"""

from __future__ import annotations

import torch


def fit_logistic(x: torch.Tensor, labels: torch.Tensor, l2: float, steps: int = 100) -> tuple[torch.Tensor, float]:
    """Weights ``(w (d,), b)`` minimising balanced BCE(x @ w + b, labels) + l2/2 * |w|^2 on ``x`` (N, d).

    Both classes weigh the same however unbalanced ``labels`` (0/1) are.
    """
    x, y = x.float(), labels.float()
    positive = y.mean().clamp(1e-6, 1 - 1e-6)
    sample_weight = torch.where(y > 0, 0.5 / positive, 0.5 / (1 - positive))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, weight=sample_weight)
        loss = bce + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), float(b.detach())


def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class accuracy of 0/1 predictions (over the classes present in ``labels``)."""
    rates = [float((predicted[labels == v] == v).float().mean()) for v in (0, 1) if (labels == v).any()]
    return sum(rates) / len(rates)
