"""The per-image width policy: one MDP step before each switchable layer.

State at layer ``i`` (per sample):
  * features of the activation the layer is about to consume: global average pool of the
    (spatially subsampled, for maps of 14x14 and more) activation, projected by a per-layer
    linear map, whose bias also tells the network which layer is next;
  * the budget state: the slack still free once the cheapest cost of layers ``i..L-1`` is
    reserved, as a fraction of what those layers could use at most; BitOps spent so far and the
    budget itself, both as fractions of the dearest configuration; the layer's position.
Action: the layer's width. Reward (training): log-probability of the true class minus
``bitops_charge * bitops / max_bitops``.

The budget is a guarantee by construction: a width is masked unless, after paying for it, the
remaining layers still fit at their cheapest width. By induction from the first layer, any
budget at or above the cheapest configuration is always met; a budget below it is refused.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from abn.bitops import CostTable
from abn.errors import BudgetError
from abn.supernet import Supernet

POOL_SUBSAMPLE_FROM = 14  # maps this wide or wider are pooled over every other pixel


def pooled_features(activation: torch.Tensor) -> torch.Tensor:
    """Cheap summary of an activation map: channel means over a subsampled grid."""
    if activation.shape[-1] >= POOL_SUBSAMPLE_FROM:
        activation = activation[:, :, ::2, ::2]
    return activation.mean(dim=(2, 3))


@dataclass(frozen=True)
class _TrackerConstants:
    """What :class:`BudgetTracker` needs per layer, derived from the cost table alone."""

    cost_then_cheapest: dict[int, torch.Tensor]  # decision layer -> (K,)
    cost_by_width: list[torch.Tensor]  # layer -> (max width + 1,)
    state_weight: list[torch.Tensor]  # layer -> (2, 4)
    state_bias: list[torch.Tensor]  # layer -> (4,)
    state_low: torch.Tensor
    state_high: torch.Tensor


@functools.lru_cache(maxsize=64)
def _tracker_constants(
    table: CostTable, decisions: tuple[int, ...], device: torch.device
) -> _TrackerConstants:
    """Built once per (model, granularity, device), not per batch: about 0.3 ms of small tensor
    constructions that every request batch would otherwise pay."""
    f64 = torch.float64
    bits = table.bit_candidates
    min_rem = table.min_remaining()
    max_rem = table.remaining(max(bits))
    top = table.max_bitops
    n = len(table.layer_macs)
    ends = [*decisions[1:], n]
    # feasible(i): spent + cost of width k over the layers decided at i (up to the next
    # decision) + cheapest cost of the layers after them
    cost_then_cheapest = {
        i: torch.tensor(
            [b * b * sum(table.layer_macs[i:j]) + min_rem[j] for b in bits],
            dtype=f64,
            device=device,
        )
        for i, j in zip(decisions, ends, strict=True)
    }
    # pay(i, widths): cost looked up by width
    cost_by_width = [
        torch.tensor([macs * w * w for w in range(max(bits) + 1)], dtype=f64, device=device)
        for macs in table.layer_macs
    ]
    # state(i) = clamp([budget, spent] @ weight + bias_i), one affine map per layer:
    # slack = (budget - spent - min_rem) / span, spent / top, budget / top, position
    weights, biases = [], []
    for i in range(n):
        span = max(max_rem[i] - min_rem[i], 1.0)
        weights.append(
            torch.tensor([[1 / span, 0, 1 / top, 0], [-1 / span, 1 / top, 0, 0]], dtype=f64).to(
                device
            )
        )
        biases.append(
            torch.tensor([-min_rem[i] / span, 0, 0, i / max(1, n - 1)], dtype=f64, device=device)
        )
    inf = float("inf")
    return _TrackerConstants(
        cost_then_cheapest,
        cost_by_width,
        weights,
        biases,
        torch.tensor([0.0, -inf, -inf, -inf], dtype=f64, device=device),
        torch.tensor([1.5, inf, 1.5, inf], dtype=f64, device=device),
    )


class BudgetTracker:
    """Per-sample budget bookkeeping along one forward pass, in float64 (exact for integers).

    Every per-layer constant is precomputed once per model (``_tracker_constants``), so each
    decision costs a handful of tensor ops whatever the depth: at serving batch sizes, op
    count, not arithmetic, is the cost.
    """

    def __init__(
        self,
        table: CostTable,
        budgets: torch.Tensor,
        decision_layers: Sequence[int] | None = None,
    ) -> None:
        self.budgets = budgets.double()
        self.spent = torch.full_like(self.budgets, table.fixed_bitops)
        n = len(table.layer_macs)
        decisions = tuple(range(n)) if decision_layers is None else tuple(sorted(decision_layers))
        self._c = _tracker_constants(table, decisions, self.budgets.device)

    def feasible(self, index: int) -> torch.Tensor:
        """``(N, K)`` bool: widths that, paid for every layer this decision covers, leave the
        layers after them able to fit. ``index`` is a decision layer."""
        after = self.spent[:, None] + self._c.cost_then_cheapest[index][None, :]
        return after <= self.budgets[:, None]

    def state(self, index: int) -> torch.Tensor:
        """``(N, 4)`` float: slack fraction, spent and budget as fractions of max, position."""
        both = torch.stack([self.budgets, self.spent], dim=1)
        raw = torch.addmm(self._c.state_bias[index], both, self._c.state_weight[index])
        return raw.clamp(self._c.state_low, self._c.state_high).float()

    def pay(self, index: int, widths: torch.Tensor) -> None:
        self.spent = self.spent + self._c.cost_by_width[index][widths.long()]


def check_budget(table: CostTable, budget: float) -> None:
    """Refuse a non-finite, non-positive or infeasible budget, stating the feasible range.

    Plain Python on purpose: the service checks one budget per request on its event loop."""
    if not math.isfinite(budget) or budget <= 0:
        raise BudgetError(
            "a budget must be a positive finite number", table.min_bitops, table.max_bitops
        )
    if budget < table.min_bitops:
        raise BudgetError(
            f"budget {budget:.6g} BitOps is below the cheapest configuration",
            table.min_bitops,
            table.max_bitops,
        )


def check_budgets(table: CostTable, budgets: torch.Tensor) -> None:
    """:func:`check_budget` for a tensor of budgets (the first offending one is reported)."""
    if not bool(torch.isfinite(budgets).all()) or bool((budgets <= 0).any()):
        check_budget(table, math.nan)
    check_budget(table, float(budgets.min()))


GRANULARITIES = ("layer", "block", "network")


def decision_layers_for(table: CostTable, granularity: str) -> tuple[int, ...]:
    """Where the policy decides: before every switchable layer (``layer``), before the first
    layer of each residual block, the block then running at one width (``block``), or once,
    before the first layer, for the whole network (``network``)."""
    n = len(table.layer_macs)
    if granularity == "layer":
        return tuple(range(n))
    if granularity == "network":
        return (0,)
    if granularity == "block":
        blocks = [name.rsplit(".", 1)[0] for name in table.layer_names]
        return tuple(i for i in range(n) if i == 0 or blocks[i] != blocks[i - 1])
    raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")


@dataclass(frozen=True)
class PolicySpec:
    feature_channels: tuple[int, ...]  # channels of the activation at each decision
    bit_candidates: tuple[int, ...]
    hidden: int = 32
    state_features: int = 4
    # switchable-layer indices where a decision is taken; each holds until the next one.
    # Empty means every layer (the per-layer MDP, and what policies saved before this existed).
    decision_layers: tuple[int, ...] = ()

    def decisions(self) -> tuple[int, ...]:
        return self.decision_layers or tuple(range(len(self.feature_channels)))

    def to_dict(self) -> dict:
        return {
            "feature_channels": list(self.feature_channels),
            "bit_candidates": list(self.bit_candidates),
            "hidden": self.hidden,
            "state_features": self.state_features,
            "decision_layers": list(self.decisions()),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PolicySpec:
        return cls(
            tuple(d["feature_channels"]),
            tuple(d["bit_candidates"]),
            int(d["hidden"]),
            int(d.get("state_features", 4)),
            tuple(d.get("decision_layers", ())),
        )

    @classmethod
    def for_table(
        cls, table: CostTable, hidden: int = 32, granularity: str = "layer"
    ) -> PolicySpec:
        decisions = decision_layers_for(table, granularity)
        return cls(
            tuple(table.layer_input_shapes[i][0] for i in decisions),
            table.bit_candidates,
            hidden,
            decision_layers=decisions,
        )


class WidthPolicy(nn.Module):
    """A small MLP scoring each width of the next layer from the MDP state."""

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        h = spec.hidden
        self.feature_proj = nn.ModuleList(nn.Linear(c, h) for c in spec.feature_channels)
        self.state_proj = nn.Linear(spec.state_features, h, bias=False)
        self.hidden = nn.Linear(h, h)
        self.head = nn.Linear(h, len(spec.bit_candidates))
        nn.init.zeros_(self.head.weight)
        # Start by preferring wide widths: a fresh policy then behaves like "spend the budget".
        with torch.no_grad():
            self.head.bias.copy_(torch.linspace(-1.0, 1.0, len(spec.bit_candidates)))

        self._position = {layer: k for k, layer in enumerate(spec.decisions())}

    def decides_at(self, index: int) -> bool:
        return index in self._position

    def forward(self, index: int, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Width scores before switchable layer ``index`` (a decision layer)."""
        z = F.relu(self.feature_proj[self._position[index]](features) + self.state_proj(state))
        return self.head(F.relu(self.hidden(z)))

    def flops_per_image(self, table: CostTable) -> int:
        """FLOPs of all decisions for one image: pooling, the MLP (2 per MAC), the mask."""
        h, k, s = self.spec.hidden, len(self.spec.bit_candidates), self.spec.state_features
        total = 0
        for i in self.spec.decisions():
            c, hh, ww = table.layer_input_shapes[i]
            if ww >= POOL_SUBSAMPLE_FROM:
                hh, ww = (hh + 1) // 2, (ww + 1) // 2
            total += c * hh * ww  # pooling sums
            total += 2 * (c * h + s * h + h * h + h * k) + 3 * h  # MLP + biases + ReLUs
            total += 4 * k + 8  # budget state, mask and argmax
        return total


Chooser = Callable[[int, torch.Tensor, BudgetTracker, torch.Tensor], torch.Tensor]


@dataclass
class Rollout:
    logits: torch.Tensor  # (N, classes)
    widths: torch.Tensor  # (N, L) chosen widths
    bitops: torch.Tensor  # (N,) float64 BitOps spent
    log_prob: torch.Tensor | None = None  # (N,) sum over layers, when sampled
    entropy: torch.Tensor | None = None


def rollout(
    net: Supernet,
    table: CostTable,
    x: torch.Tensor,
    budgets: torch.Tensor,
    policy: WidthPolicy | None = None,
    *,
    pinned: torch.Tensor | None = None,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Run ``x`` through ``net`` layer by layer, each sample at the widths chosen for it.

    A sample's widths come from its row of ``pinned`` (an ``(N, L)`` tensor; a row of zeros
    means "not pinned"), else from ``policy`` (greedy, or sampled for training), else from the
    fallback rule: the dearest uniform width that fits the sample's budget. Policy choices are
    always masked by the budget; pinned rows are taken as given (the caller checks them).
    """
    budgets = budgets.to(device=x.device, dtype=torch.float64)
    tracker = BudgetTracker(table, budgets, None if policy is None else policy.spec.decisions())
    bits = torch.tensor(table.bit_candidates, device=x.device)
    free = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    any_free, all_free = True, True
    if pinned is not None:
        pinned = pinned.to(x.device).long()
        free = (pinned == 0).all(dim=1)  # rows of zeros are not pinned: the policy decides
        any_free, all_free = bool(free.any()), bool(free.all())
    fallback = uniform_fallback(table, budgets).to(x.device) if policy is None else None
    run = net.start(x)
    chosen, log_probs, entropies = [], [], []
    last_act, last_feat = None, None
    while not run.done:
        i = run.layer_index
        if not any_free:
            widths = pinned[:, i]
        elif fallback is not None:
            widths = fallback
        elif not policy.decides_at(i):
            widths = chosen[-1]  # the last decision holds (block / network granularity)
        else:
            act = run.activation
            if act is not last_act:  # conv1 and shortcut read the same tensor: pool once
                last_act, last_feat = act, pooled_features(act)
            scores = policy(i, last_feat, tracker.state(i))
            # a pinned row's pick is discarded; leaving it unmasked keeps a row that is pinned
            # over its budget (all widths infeasible) from turning the distribution into NaN
            allowed = tracker.feasible(i)
            if not all_free:
                allowed = allowed | ~free[:, None]
            scores = scores.masked_fill(~allowed, float("-inf"))
            if sample:
                dist = torch.distributions.Categorical(logits=scores)
                pick = torch.multinomial(dist.probs, 1, generator=generator).squeeze(1)
                zero = torch.zeros((), device=x.device)
                log_probs.append(torch.where(free, dist.log_prob(pick), zero))
                entropies.append(torch.where(free, dist.entropy(), zero))
            else:
                pick = scores.argmax(dim=1)
            widths = bits[pick]
        if any_free and not all_free:
            widths = torch.where(free, widths, pinned[:, i])
        tracker.pay(i, widths)
        chosen.append(widths)
        run.advance(widths)
    return Rollout(
        logits=run.logits,
        widths=torch.stack(chosen, dim=1),
        bitops=tracker.spent,
        log_prob=torch.stack(log_probs, 1).sum(1) if log_probs else None,
        entropy=torch.stack(entropies, 1).sum(1) if entropies else None,
    )


def uniform_fallback(table: CostTable, budgets: torch.Tensor) -> torch.Tensor:
    """Per sample, the widest uniform width whose whole configuration fits the budget."""
    n = len(table.layer_macs)
    best = torch.full(budgets.shape, min(table.bit_candidates), dtype=torch.long)
    for b in sorted(table.bit_candidates):
        fits = budgets.cpu() >= table.cost([b] * n)
        best = torch.where(fits, torch.tensor(b), best)
    return best
