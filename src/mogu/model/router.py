"""The per-layer router: two independent sigmoid scorers, per token."""

from __future__ import annotations

import torch
from torch import nn

from mogu.model.config import RouterConfig


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """What a router with ``input_norm`` actually scores: the input divided by its root mean square."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _output_layer(scorer: nn.Module) -> nn.Linear:
    """The scorer's last linear map, whose bias is the logit's offset."""
    return scorer if isinstance(scorer, nn.Linear) else scorer[-1]


def _scorer(d: int, cfg: RouterConfig) -> nn.Module:
    if cfg.shape == "linear":
        return nn.Linear(d, 1)
    return nn.Sequential(nn.Linear(d, cfg.hidden, bias=False), nn.Linear(cfg.hidden, d), nn.Linear(d, 1))


class Router(nn.Module):
    """Maps the input of the routed projection (with ``RouterConfig.reads`` "stack": and the inputs of the
    routed projections below it) to ``(w_unwill, w_glad)``.

    The two weights are sigmoid outputs of independent scorers and are not
    normalised: they need not sum to one (as in MoGU). Parameters are kept in
    float32 whatever the base model's dtype, so that small gate gradients
    survive bf16 training.
    """

    def __init__(self, in_features: int, cfg: RouterConfig, pieces: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_features = in_features
        self.pieces = pieces
        self.input_norm = cfg.input_norm
        self.unwill = _scorer(in_features * pieces, cfg)
        self.glad = _scorer(in_features * pieces, cfg)
        for scorer in (self.unwill, self.glad):
            nn.init.constant_(_output_layer(scorer).bias, cfg.init_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the gate weights, shape ``(*x.shape[:-1], 2)``: [..., 0] unwill, [..., 1] glad.

        ``x`` is ``pieces`` inputs of ``in_features`` each, concatenated; each is normalised on its own.
        """
        return self.score(self.prepare(x.unflatten(-1, (self.pieces, self.in_features))).flatten(-2))

    def prepare(self, piece: torch.Tensor) -> torch.Tensor:
        """One input as the router scores it (float32, RMS-normalised with ``input_norm``). In a stacking
        model each input is prepared once per forward, by its own layer, for every router reading it
        (``MoGULayer._gates``)."""
        h = piece.float()
        return rms_normalise(h) if self.input_norm else h

    def score(self, prepared: torch.Tensor) -> torch.Tensor:
        """The gate weights of ``pieces`` prepared inputs, concatenated: ``forward`` without the preparing."""
        return torch.sigmoid(torch.cat([self.unwill(prepared), self.glad(prepared)], dim=-1))

    def piece_weight(self, piece: int) -> torch.Tensor:
        """The rows (unwill, glad) of the linear scorers' weights that multiply input ``piece``: shape (2, d).
        ``score`` of the prepared pieces is ``sigmoid(sum_p piece p @ piece_weight(p).T + bias)``, which a
        stacking model computes with each input projected once for every router reading it (``MoGULayer``)."""
        if self.cfg.shape != "linear":
            raise ValueError("only linear scorers split into per-input pieces")
        cols = slice(piece * self.in_features, (piece + 1) * self.in_features)
        return torch.cat([self.unwill.weight[:, cols], self.glad.weight[:, cols]])

    def from_logits(self, summed: torch.Tensor) -> torch.Tensor:
        """The gate weights from the scorers' summed weight terms (..., 2) (unwill, glad): the bias added."""
        bias = torch.cat([self.unwill.bias, self.glad.bias])
        return torch.sigmoid(summed + bias)

    def shift_towards_glad(self, shift: float) -> None:
        """Add ``shift`` to the glad logit and subtract it from the unwilling one, for every input."""
        with torch.no_grad():
            _output_layer(self.glad).bias.add_(shift)
            _output_layer(self.unwill).bias.sub_(shift)

    def set_linear(self, unwill: tuple[torch.Tensor, torch.Tensor], glad: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Make each scorer compute ``w . x + b`` for the given (w (d,), b) pairs, exactly.

        For the paper's shape the three factors are set so that their product is
        ``w``: the first two project onto an orthonormal basis U whose first
        vector is along ``w`` (W2 W1 = U U^T, which leaves ``w`` unchanged), the
        last is ``w`` itself. The other basis vectors are random, so gradients
        still reach every direction when training continues.
        """
        with torch.no_grad():
            for scorer, (w, b) in ((self.unwill, unwill), (self.glad, glad)):
                w = w.to(torch.float32).reshape(-1)
                if isinstance(scorer, nn.Linear):
                    scorer.weight.copy_(w[None])
                    scorer.bias.fill_(float(b))
                    continue
                first, second, third = scorer
                d, k = w.numel(), min(first.out_features, w.numel())
                basis = torch.cat([w[:, None], torch.randn(d, k - 1, generator=torch.Generator().manual_seed(0))], dim=1)
                u, _ = torch.linalg.qr(basis)  # (d, k), first column along w
                first.weight.zero_()
                first.weight[:k] = u.T
                second.weight.zero_()
                second.weight[:, :k] = u
                second.bias.zero_()
                third.weight.copy_(w[None])
                third.bias.fill_(float(b))


# The paper-shape parameter names of one router, as in ``Router(..., shape="paper").state_dict()``.
PAPER_KEYS = tuple(f"{s}.{i}.{p}" for s in ("unwill", "glad") for i, p in ((0, "weight"), (1, "weight"), (1, "bias"), (2, "weight"), (2, "bias")))


def fold_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A paper-shape router's state dict as the equivalent ``linear`` router's (equal up to float rounding).

    The paper's scorer Linear(d, h, no bias) -> Linear(h, d) -> Linear(d, 1)
    has no non-linearity, so it collapses to one Linear(d, 1): about 2 x 590k
    fewer parameters per layer at d=576, and less work per token at inference.
    """
    folded = {}
    with torch.no_grad():
        for name in ("unwill", "glad"):
            w1, w2, b2 = state[f"{name}.0.weight"], state[f"{name}.1.weight"], state[f"{name}.1.bias"]
            w3, b3 = state[f"{name}.2.weight"], state[f"{name}.2.bias"]
            folded[f"{name}.weight"] = (w3 @ w2) @ w1
            folded[f"{name}.bias"] = w3 @ b2 + b3
    return folded
