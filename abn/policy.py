"""The per-image width policy: one MDP step before each switchable layer.

State at layer ``i`` (per sample):
  * features of the activation the layer is about to consume: global average pool of the
    (spatially subsampled, for maps of 14x14 and more) activation, projected by a per-layer
    linear map, whose bias also tells the network which layer is next;
  * the budget state: the slack still free once the cheapest cost of layers ``i..L-1`` is
    reserved, as a fraction of what those layers could use at most; BitOps spent so far and the
    budget itself, both as fractions of the dearest configuration; the layer's position.
Action: the layer's width. Reward (training): log-probability of the true class minus a
charge per BitOps spent (see :mod:`abn.train.policy`).

The last decision (when the spec has escalations), once the first pass has answered: stop, or
re-run the network from a block boundary at one width, reusing the first pass up to there (a
cascade inside the MDP). Its state is the first pass's class probabilities and the budget
left; its answer replaces the first pass's, and both passes are paid.

The budget is a guarantee by construction: a width is masked unless, after paying for it, the
remaining layers still fit at their cheapest width. By induction from the first layer, any
budget at or above the cheapest configuration is always met; a budget below it is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from abn.bitops import CostTable
from abn.errors import BudgetError
from abn.layers import widths_of_rows
from abn.supernet import BlockInput, LayerwiseRun, Supernet

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
    top: float  # BitOps of the dearest configuration
    fixed: float  # BitOps of the stem and classifier, paid by every configuration


def _tracker_constants(
    table: CostTable, decisions: tuple[int, ...], device: torch.device
) -> _TrackerConstants:
    """Built once per loaded model (:class:`CompiledPolicy`), not per batch: about 0.3 ms of
    small tensor constructions that every request batch would otherwise pay."""
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
        top,
        table.fixed_bitops,
    )


class BudgetTracker:
    """Per-sample budget bookkeeping along one forward pass, in float64 (exact for integers).

    Every per-layer constant is built once per model (``_tracker_constants``, held by
    :class:`CompiledPolicy`), so each decision costs a handful of tensor ops whatever the
    depth: at serving batch sizes, op count, not arithmetic, is the cost.
    """

    def __init__(self, constants: _TrackerConstants, budgets: torch.Tensor) -> None:
        self.budgets = budgets.double()
        self.spent = torch.full_like(self.budgets, constants.fixed)
        self._c = constants

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

    def feasible_extra(self, costs: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` bool: which of ``K`` extra costs still fit each sample's budget."""
        return self.spent[:, None] + costs[None, :] <= self.budgets[:, None]

    def final_state(self) -> torch.Tensor:
        """``(N, 4)`` float once every layer is paid: what is left, spent and budget as
        fractions of the dearest configuration, and the position (1, past the last layer)."""
        top = self._c.top
        left = (self.budgets - self.spent) / top
        state = torch.stack([left, self.spent / top, self.budgets / top, torch.ones_like(left)], 1)
        return state.clamp(max=1.5).float()

    def pay_extra(self, costs: torch.Tensor) -> None:
        self.spent = self.spent + costs


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


Escalation = tuple[int, int]  # (block to re-run from, width of the re-run)


def escalations_for(table: CostTable) -> tuple[Escalation, ...]:
    """Every re-run a policy may choose after its first pass: from each block boundary, at each
    width above the cheapest (re-running at the cheapest never buys accuracy)."""
    blocks = decision_layers_for(table, "block")
    return tuple((k, b) for k in range(len(blocks)) for b in table.bit_candidates[1:])


def escalation_costs(
    table: CostTable, escalations: tuple[Escalation, ...], device: torch.device
) -> torch.Tensor:
    """``(1 + E,)`` float64: what each escalation option adds, option 0 being "stop"."""
    first = decision_layers_for(table, "block")
    extra = [
        sum(table.layer_cost(i, b) for i in range(first[k], len(table.layer_macs)))
        for k, b in escalations
    ]
    return torch.tensor([0.0, *extra], dtype=torch.float64, device=device)


@dataclass(frozen=True)
class PolicySpec:
    feature_channels: tuple[int, ...]  # channels of the activation at each decision
    bit_candidates: tuple[int, ...]
    hidden: int = 32
    state_features: int = 4
    # switchable-layer indices where a decision is taken; each holds until the next one.
    # Empty means every layer (the per-layer MDP, and what policies saved before this existed).
    decision_layers: tuple[int, ...] = ()
    # the re-runs the last decision may choose, after the first pass; empty: no last decision
    escalations: tuple[Escalation, ...] = ()
    num_classes: int = 0  # the first pass's class probabilities are the last decision's input

    def decisions(self) -> tuple[int, ...]:
        return self.decision_layers or tuple(range(len(self.feature_channels)))

    def to_dict(self) -> dict:
        return {
            "feature_channels": list(self.feature_channels),
            "bit_candidates": list(self.bit_candidates),
            "hidden": self.hidden,
            "state_features": self.state_features,
            "decision_layers": list(self.decisions()),
            "escalations": [list(e) for e in self.escalations],
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PolicySpec:
        return cls(
            tuple(d["feature_channels"]),
            tuple(d["bit_candidates"]),
            int(d["hidden"]),
            int(d.get("state_features", 4)),
            tuple(d.get("decision_layers", ())),
            tuple((int(k), int(b)) for k, b in d.get("escalations", ())),
            int(d.get("num_classes", 0)),
        )

    @classmethod
    def for_table(
        cls,
        table: CostTable,
        hidden: int = 32,
        granularity: str = "layer",
        num_classes: int = 0,
    ) -> PolicySpec:
        """A spec deciding at ``granularity``; with ``num_classes`` it also gets the last
        decision, the re-run from a block boundary (:func:`escalations_for`)."""
        decisions = decision_layers_for(table, granularity)
        return cls(
            tuple(table.layer_input_shapes[i][0] for i in decisions),
            table.bit_candidates,
            hidden,
            decision_layers=decisions,
            escalations=escalations_for(table) if num_classes else (),
            num_classes=num_classes,
        )


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """What the last decision reads of the first pass: its class probabilities, and the same
    sorted (top-1, margin and spread, whatever the class)."""
    probs = torch.softmax(logits, dim=1)
    return torch.cat([probs, probs.sort(dim=1, descending=True).values], dim=1)


class WidthPolicy(nn.Module):
    """A small MLP scoring each width of the next layer from the MDP state, and (when the spec
    has escalations) a second one scoring "stop" or a re-run once the first pass has answered."""

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
        self.escalation: nn.Sequential | None = None
        if spec.escalations:
            options = 1 + len(spec.escalations)
            last = nn.Linear(h, options)
            nn.init.zeros_(last.weight)
            with torch.no_grad():  # start at even odds of stopping
                last.bias.zero_()
                last.bias[0] = math.log(options - 1)
            self.escalation = nn.Sequential(
                nn.Linear(2 * spec.num_classes + spec.state_features, h),
                nn.ReLU(),
                nn.Linear(h, h),
                nn.ReLU(),
                last,
            )
        self._position = {layer: k for k, layer in enumerate(spec.decisions())}

    def decides_at(self, index: int) -> bool:
        return index in self._position

    def forward(self, index: int, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Width scores before switchable layer ``index`` (a decision layer)."""
        z = F.relu(self.feature_proj[self._position[index]](features) + self.state_proj(state))
        return self.head(F.relu(self.hidden(z)))

    def escalation_scores(self, logits: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``(N, 1 + E)`` scores of "stop" and of each re-run, from the first pass's answer."""
        assert self.escalation is not None
        return self.escalation(torch.cat([confidence_features(logits), state], dim=1))

    def flops_per_image(self, table: CostTable) -> int:
        """FLOPs of all decisions for one image: pooling, the MLPs (2 per MAC), the mask."""
        h, k, s = self.spec.hidden, len(self.spec.bit_candidates), self.spec.state_features
        total = 0
        for i in self.spec.decisions():
            c, hh, ww = table.layer_input_shapes[i]
            if ww >= POOL_SUBSAMPLE_FROM:
                hh, ww = (hh + 1) // 2, (ww + 1) // 2
            total += c * hh * ww  # pooling sums
            total += 2 * (c * h + s * h + h * h + h * k) + 3 * h  # MLP + biases + ReLUs
            total += 4 * k + 8  # budget state, mask and argmax
        if self.spec.escalations:
            c, e = self.spec.num_classes, 1 + len(self.spec.escalations)
            total += 3 * c + c * c  # softmax and a sort's comparisons (an upper bound)
            total += 2 * ((2 * c + s) * h + h * h + h * e) + 2 * h + e  # MLP + biases + ReLUs
            total += 3 * e + 8  # budget state, mask and argmax
        return total


@dataclass
class Rollout:
    logits: torch.Tensor  # (N, classes): the answer (the re-run's, for an escalated image)
    widths: torch.Tensor  # (N, L): the configuration that answered
    bitops: torch.Tensor  # (N,) float64 BitOps spent, both passes
    escalation: torch.Tensor | None = None  # (N,) option taken (0: none), when the policy has it
    first_pass: torch.Tensor | None = None  # (N, L) the first pass's widths, when it had one
    log_prob: torch.Tensor | None = None  # (N,) sum over decisions, when sampled
    entropy: torch.Tensor | None = None


class _Picker:
    """Turns masked scores into choices: argmax, or sampled with training's bookkeeping (the
    log-probability and entropy of each free row's choices; pinned rows contribute nothing)."""

    def __init__(self, sample: bool, generator: torch.Generator | None, free: torch.Tensor):
        self.sample, self.generator, self.free = sample, generator, free
        self.log_probs: list[torch.Tensor] = []
        self.entropies: list[torch.Tensor] = []

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.sample:
            return scores.argmax(dim=1)
        dist = torch.distributions.Categorical(logits=scores)
        pick = torch.multinomial(dist.probs, 1, generator=self.generator).squeeze(1)
        zero = torch.zeros((), device=scores.device)
        self.log_probs.append(torch.where(self.free, dist.log_prob(pick), zero))
        self.entropies.append(torch.where(self.free, dist.entropy(), zero))
        return pick

    def totals(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.log_probs:
            return None, None
        return torch.stack(self.log_probs, 1).sum(1), torch.stack(self.entropies, 1).sum(1)


class _PolicyChooser:
    """The policy's widths for free rows, masked by the budget; a decision holds until the
    next one (block / network granularity)."""

    def __init__(self, policy: WidthPolicy, bits: torch.Tensor, picker: _Picker) -> None:
        self.policy, self.picker, self.bits = policy, picker, bits
        self.all_free = bool(picker.free.all())
        self.last: torch.Tensor | None = None
        self._pooled: tuple[torch.Tensor, torch.Tensor] | None = None

    def _features(self, activation: torch.Tensor) -> torch.Tensor:
        # conv1 and the shortcut read the same tensor: pool it once
        if self._pooled is None or self._pooled[0] is not activation:
            self._pooled = (activation, pooled_features(activation))
        return self._pooled[1]

    def __call__(self, index: int, activation: torch.Tensor, tracker: BudgetTracker):
        if not self.policy.decides_at(index):
            return self.last
        scores = self.policy(index, self._features(activation), tracker.state(index))
        # a pinned row's pick is discarded; leaving it unmasked keeps a row that is pinned
        # over its budget (all widths infeasible) from turning the distribution into NaN
        allowed = tracker.feasible(index)
        if not self.all_free:
            allowed = allowed | ~self.picker.free[:, None]
        self.last = self.bits[self.picker(scores.masked_fill(~allowed, float("-inf")))]
        return self.last


class UniformFallback:
    """The width rule without a learned policy: per sample, the widest uniform width whose
    whole configuration fits the budget (the cheapest when none does). The uniform costs are
    built once, on the device the budgets are on, so a batch pays one comparison."""

    def __init__(self, table: CostTable, device: torch.device) -> None:
        bits = sorted(table.bit_candidates)
        uniform = [table.cost([b] * len(table.layer_macs)) for b in bits]
        self.widths = torch.tensor(bits, device=device)
        self.costs = torch.tensor(uniform, dtype=torch.float64, device=device)  # ascending

    def __call__(self, budgets: torch.Tensor) -> torch.Tensor:
        fitting = (budgets.double()[:, None] >= self.costs[None, :]).sum(dim=1)
        return self.widths[(fitting - 1).clamp(min=0)]


WidthRule = Callable[[int, torch.Tensor, BudgetTracker], torch.Tensor]


class CompiledPolicy:
    """A supernet, its cost table and its width rule (the learned policy, or the uniform
    fallback without one), made ready to roll out batches on one device.

    Everything a rollout needs that depends on the model alone is built here, once: the
    budget tracker's per-layer costs and state maps, the candidate widths, the last decision's
    re-run costs, the fallback's uniform costs. Make one where the model is loaded (the
    service) or before a training or evaluation loop, then call :meth:`rollout` per batch;
    nothing here depends on the policy's weights, so training may keep changing them.
    """

    def __init__(
        self,
        net: Supernet,
        table: CostTable,
        policy: WidthPolicy | None,
        device: torch.device,
    ) -> None:
        self.net, self.table, self.policy, self.device = net, table, policy, device
        every_layer = tuple(range(len(table.layer_macs)))
        decisions = every_layer if policy is None else tuple(sorted(policy.spec.decisions()))
        self._tracker = _tracker_constants(table, decisions, device)
        self._bits = torch.tensor(table.bit_candidates, device=device)
        self._fallback = UniformFallback(table, device) if policy is None else None
        self._escalation_costs: torch.Tensor | None = None
        if policy is not None and policy.escalation is not None:
            self._escalation_costs = escalation_costs(table, policy.spec.escalations, device)

    def rollout(
        self,
        x: torch.Tensor,
        budgets: torch.Tensor,
        *,
        pinned: torch.Tensor | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Run ``x`` through the network layer by layer, each sample at the widths chosen for it.

        A sample's widths come from its row of ``pinned`` (an ``(N, L)`` tensor; a row of
        zeros means "not pinned"), else from the policy (greedy, or sampled for training), else
        from the uniform fallback. Policy choices are always masked by the budget; pinned rows
        are taken as given (the caller checks them) and never re-run. A policy with
        escalations then takes its last decision (:meth:`_escalate`).
        """
        budgets = budgets.to(device=x.device, dtype=torch.float64)
        tracker = BudgetTracker(self._tracker, budgets)
        is_pinned = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if pinned is not None:
            pinned = pinned.to(x.device).long()
            is_pinned = (pinned != 0).any(dim=1)
        picker = _Picker(sample, generator, ~is_pinned)
        choose = self._width_rule(budgets, picker, pinned, is_pinned)
        run = self.net.start(x)
        chosen = []
        while not run.done:
            i = run.layer_index
            widths = choose(i, run.activation, tracker)
            tracker.pay(i, widths)
            chosen.append(widths)
            run.advance(widths)
        result = Rollout(run.logits, torch.stack(chosen, dim=1), tracker.spent)
        if self._escalation_costs is not None and not bool(is_pinned.all()):
            self._escalate(result, run, tracker, picker)
        result.bitops = tracker.spent
        result.log_prob, result.entropy = picker.totals()
        return result

    def _width_rule(
        self,
        budgets: torch.Tensor,
        picker: _Picker,
        pinned: torch.Tensor | None,
        is_pinned: torch.Tensor,
    ) -> WidthRule:
        """The rule giving each layer's widths: pinned rows, the policy, or the fallback."""
        if pinned is not None and bool(is_pinned.all()):
            return lambda i, _act, _tracker: pinned[:, i]
        if self.policy is None:
            assert self._fallback is not None
            fallback = self._fallback(budgets)
            free_rule: WidthRule = lambda _i, _act, _tracker: fallback  # noqa: E731
        else:
            free_rule = _PolicyChooser(self.policy, self._bits, picker)
        if pinned is None or not bool(is_pinned.any()):
            return free_rule
        return lambda i, act, tracker: torch.where(
            is_pinned, pinned[:, i], free_rule(i, act, tracker)
        )

    def _escalate(
        self, result: Rollout, run: LayerwiseRun, tracker: BudgetTracker, picker: _Picker
    ) -> None:
        """The last decision: stop, or re-run from a block boundary at one width, reusing the
        first pass up to that boundary; the re-run's answer replaces the first pass's and both
        are paid. An option is masked unless its extra cost fits what is left of the budget."""
        assert self.policy is not None and self._escalation_costs is not None
        costs = self._escalation_costs
        allowed = tracker.feasible_extra(costs) & picker.free[:, None]
        allowed[:, 0] = True  # stopping is always allowed (the first pass already fits)
        scores = self.policy.escalation_scores(result.logits, tracker.final_state())
        option = picker(scores.masked_fill(~allowed, float("-inf")))
        tracker.pay_extra(costs[option])
        result.escalation = option
        result.first_pass = result.widths.clone()
        escalations = self.policy.spec.escalations
        taken: dict[Escalation, list[int]] = {}
        for row, o in enumerate(option.tolist()):
            if o:
                taken.setdefault(escalations[o - 1], []).append(row)
        for (block, width), rows in sorted(taken.items()):
            self._rerun(result, run.block_inputs[block], block, width, rows)

    def _rerun(
        self, result: Rollout, given: BlockInput, block: int, width: int, rows: list[int]
    ) -> None:
        """Re-run the samples ``rows`` from block ``block``'s input at ``width`` in every
        layer, and put their answers and widths into ``result``. One pass per (block, width):
        each layer then runs one group at one width, where a pass of mixed widths would split,
        gather and scatter its rows at every layer."""
        device = result.logits.device
        index = torch.tensor(rows, device=device)
        rerun = self.net.resume(
            block, BlockInput(given.activation[index], widths_of_rows(given.widths, rows))
        )
        while not rerun.done:
            rerun.advance(width)
        result.logits = result.logits.index_copy(0, index, rerun.logits.to(result.logits.dtype))
        first = self.net.block_first_layers()[block]
        result.widths[index, first:] = width
