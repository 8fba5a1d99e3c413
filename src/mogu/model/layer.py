"""The routed projection: a frozen base projection, two LoRA experts and a router.

For input ``h`` the output in each mode is::

    base    W h
    glad    W h + s * dW_glad h
    unwill  W h + s * dW_unwill h
    mogu    (w_u + w_g) * W h + s * (w_u * dW_unwill h + w_g * dW_glad h),  (w_u, w_g) = router(h)
    fixed   the same with (w_u, w_g) given

(in every mode but ``base``, positions outside ``RoutingState.routed``, when it is set,
get ``W h``: how a prompt is read under ``RouterConfig.prompt`` "base", in training the
experts as in routing; in mode ``mogu``, ``RoutingState.first``, when it is set, replaces
the gates of the last position, the first decision under ``RouterConfig.first`` "reader",
or of every position under ``RouterConfig.later`` "reader")

which is ``w_u * Unwill_resp(h) + w_g * Glad_resp(h)`` as in MoGU. Under
``RouterConfig.reads`` "stack" the router scores ``h`` together with the inputs
of the routed layers below, at the same position (``MoGULayer._gates``). For base
projections with a bias, ``W h`` includes the bias (the whole expert output is
weighted). The LoRA parameter names (``lora_A.<expert>.weight``) follow PEFT's
so that an expert converts to and from a PEFT adapter file by renaming keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from mogu.model.config import EXPERTS, ExpertConfig, Mode, RouterConfig
from mogu.model.router import Router


@dataclass
class RoutingState:
    """State shared by all routed layers of one model: set once, read by each layer."""

    mode: Mode = "base"
    fixed: tuple[float, float] = (0.5, 0.5)  # (w_unwill, w_glad) for mode "fixed"
    record: bool = False  # keep the gate weights of the last forward pass
    gates: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (batch, seq, 2)
    # While decoding: layer -> one (batch, 2) tensor per forward, the gates at the last position
    # (the position whose output chooses the next token). None: not traced.
    trace: dict[int, list[torch.Tensor]] | None = None
    # (batch, seq) bool: the positions the routed modes route; the others get the base projection.
    # None: every position (set for one forward over known sequences, see MoGUModel.mode).
    routed: torch.Tensor | None = None
    # Under RouterConfig.reads "stack": for each routed layer, the sum of its router's weight terms for the
    # routed inputs run so far in this forward, and how many there were (the lowest routed layer starts anew).
    stack: dict[int, tuple[torch.Tensor, int]] = field(default_factory=dict)
    # Under RouterConfig.first "reader", while decoding: the reader's (batch, 2) gates, which every routed
    # layer takes at the last position of the next routed forward (the first decision), then cleared; under
    # RouterConfig.later "reader" at every position of every routed forward.
    first: torch.Tensor | None = None


def projection_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return weight.shape[0], weight.shape[1]  # Conv1D stores (in, out)
    raise TypeError(f"cannot route a {type(module).__name__}: only nn.Linear and Conv1D projections are supported")


class MoGULayer(nn.Module):
    """Wraps one projection of a stock transformers model (injected by module name)."""

    def __init__(
        self,
        base_layer: nn.Module,
        layer_index: int,
        expert: ExpertConfig,
        router: RouterConfig,
        state: RoutingState,
        reads: tuple[int, ...] | None = None,
    ) -> None:
        """``reads``: the decoder layers whose projection inputs the router scores, ascending, this one last
        (several under ``router.reads`` "stack"); None: this layer's own."""
        super().__init__()
        self.in_features, self.out_features = projection_features(base_layer)
        self.base_layer = base_layer
        self.layer_index = layer_index
        self.state = state
        self.scaling = expert.scaling
        self.lora_dropout = nn.Dropout(expert.dropout) if expert.dropout > 0 else nn.Identity()
        self.lora_A = nn.ModuleDict({name: nn.Linear(self.in_features, expert.r, bias=False) for name in EXPERTS})
        self.lora_B = nn.ModuleDict({name: nn.Linear(expert.r, self.out_features, bias=False) for name in EXPERTS})
        self.reads = reads or (layer_index,)
        if self.reads[-1] != layer_index:
            raise ValueError(f"layer {layer_index}'s router must read its own input last, not {self.reads}")
        self.stacks = router.reads == "stack"
        self.holds = router.later == "reader"
        self.router = Router(self.in_features, router, pieces=len(self.reads))
        # under "stack": (layer index, router, piece) for every routed layer whose router reads this layer's
        # input, this one included (set by the model, which knows them all; a tuple, so not submodules)
        self.readers: tuple[tuple[int, Router, int], ...] = ((layer_index, self.router, len(self.reads) - 1),)
        self.reset_experts()

    def reset_experts(self, names: Iterable[str] = EXPERTS) -> None:
        """PEFT's default LoRA init: A Kaiming-uniform, B zero, so a new expert equals the base."""
        for name in names:
            nn.init.kaiming_uniform_(self.lora_A[name].weight, a=5**0.5)
            nn.init.zeros_(self.lora_B[name].weight)

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """s * B A x for one expert, computed in the adapter's dtype."""
        a = self.lora_A[name]
        return self.lora_B[name](a(self.lora_dropout(x.to(a.weight.dtype)))) * self.scaling

    def _gates(self, x: torch.Tensor) -> torch.Tensor:
        """The router's weights for ``x``; under "stack" for the inputs of the routed layers so far in this
        forward with ``x`` last.

        Each layer prepares its input (``Router.prepare``) and projects it once, in one product, for every
        router that reads it (``readers``), adding each router's part to a running sum; its own router then
        only adds its bias. Concatenating the inputs below for every router instead costs memory traffic
        that grows with the square of the routed layers (docs/ablations.md, throughput).
        """
        if not self.stacks:
            return self.router(x)
        if len(self.reads) == 1:
            self.state.stack = {}
        weights = torch.cat([router.piece_weight(piece) for _, router, piece in self.readers])
        parts = nn.functional.linear(self.router.prepare(x), weights)  # (..., 2 * readers)
        for i, (reader, _, _) in enumerate(self.readers):
            part = parts[..., 2 * i : 2 * i + 2]
            summed, count = self.state.stack.get(reader, (0.0, 0))
            self.state.stack[reader] = (summed + part, count + 1)
        summed, count = self.state.stack.pop(self.layer_index)
        if count != len(self.reads):
            raise RuntimeError(f"layer {self.layer_index}'s router reads layers {self.reads}, but "
                               f"{count} of them were run in this forward")
        return self.router.from_logits(summed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        mode = self.state.mode
        if mode == "base":
            return out
        if mode in EXPERTS:
            delta = self.delta(mode, x).to(out.dtype)
            return out + (delta if self.state.routed is None else delta * self.state.routed[..., None])
        first = self.state.first
        if mode == "mogu" and first is not None and self.holds:
            gates = first[:, None].float().expand(*x.shape[:-1], 2)
        elif mode == "mogu":
            gates = self._gates(x)
            if first is not None:
                gates = torch.cat([gates[:, :-1], first[:, None].to(gates)], dim=1)
        else:  # fixed
            gates = x.new_tensor(self.state.fixed, dtype=torch.float32).expand(*x.shape[:-1], 2)
        if self.state.record:
            self.state.gates[self.layer_index] = gates
        if self.state.trace is not None:
            self.state.trace.setdefault(self.layer_index, []).append(gates[:, -1].detach())
        w_unwill, w_glad = gates[..., :1], gates[..., 1:]
        mixed = (w_unwill + w_glad) * out.float() + w_unwill * self.delta("unwill", x) + w_glad * self.delta("glad", x)
        if self.state.routed is not None:
            mixed = torch.where(self.state.routed[..., None], mixed, out.float())
        return mixed.to(out.dtype)
