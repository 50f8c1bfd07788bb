"""abn.policy: the budget is a guarantee by construction; batching, pins and the fallback."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abn.bitops import CostTable, cost_table
from abn.errors import BudgetError
from abn.policy import (
    GRANULARITIES,
    CompiledPolicy,
    PolicySpec,
    UniformFallback,
    WidthPolicy,
    check_budgets,
    decision_layers_for,
    escalation_costs,
    escalations_for,
    pooled_features,
)
from abn.supernet import DEFAULT_BIT_CANDIDATES, Supernet, build_supernet
from tests.nets import calibrate

BITS = DEFAULT_BIT_CANDIDATES


@pytest.fixture(scope="module")
def net() -> Supernet:
    torch.manual_seed(0)
    return calibrate(build_supernet("resnet8_fmnist"))


@pytest.fixture(scope="module")
def table(net: Supernet) -> CostTable:
    return cost_table(net)


def random_policy(
    table: CostTable, seed: int, granularity: str = "layer", escalate: bool = False
) -> WidthPolicy:
    """A policy whose choices depend on the image and the budget (a fresh one's head is zero,
    so it would always pick the same widths); with ``escalate``, it has the last decision."""
    torch.manual_seed(seed)
    spec = PolicySpec.for_table(table, granularity=granularity, num_classes=10 if escalate else 0)
    policy = WidthPolicy(spec).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0.0, 1.0)
    return policy


def run(net: Supernet, table: CostTable, x: torch.Tensor, budgets: torch.Tensor, policy, **kw):
    with torch.no_grad():
        return CompiledPolicy(net, table, policy, torch.device("cpu")).rollout(x, budgets, **kw)


def check_rollout(result, table: CostTable, n: int, policy=None) -> None:
    """Shapes, widths from the candidates, and BitOps spent = what ran: the answering widths,
    or, after a re-run, the first pass plus the re-run's layers."""
    assert result.widths.shape == (n, len(table.layer_macs))
    assert bool(torch.isin(result.widths, torch.tensor(BITS)).all())
    assert result.logits.shape == (n, 10)
    if result.escalation is None:
        assert torch.equal(result.bitops, table.batch_cost(result.widths))
        return
    extra = escalation_costs(table, policy.spec.escalations, torch.device("cpu"))
    expected = table.batch_cost(result.first_pass) + extra[result.escalation]
    assert torch.allclose(result.bitops, expected, rtol=1e-12)
    stopped = result.escalation == 0
    assert torch.equal(result.widths[stopped], result.first_pass[stopped])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
    sample=st.booleans(),
    granularity=st.sampled_from(GRANULARITIES),
    escalate=st.booleans(),
)
def test_rollout_never_exceeds_the_budget(
    net: Supernet,
    table: CostTable,
    seed: int,
    fractions: list[float],
    sample: bool,
    granularity: str,
    escalate: bool,
) -> None:
    low, high = table.min_bitops, 2 * table.max_bitops
    budgets = torch.tensor([low + f * (high - low) for f in fractions], dtype=torch.float64)
    budgets = budgets.clamp(low, high)
    policy = random_policy(table, seed, granularity, escalate)
    x = torch.randn(len(fractions), 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    result = run(net, table, x, budgets, policy, sample=sample, generator=gen)
    check_rollout(result, table, len(fractions), policy)
    assert bool((result.bitops <= budgets).all()), (result.bitops, budgets)
    if sample:
        assert result.log_prob.shape == (len(fractions),)
        assert bool(torch.isfinite(result.log_prob).all())


def test_budget_at_the_minimum_runs_everything_at_the_narrowest_width(
    net: Supernet, table: CostTable
) -> None:
    budgets = torch.full((3,), table.min_bitops, dtype=torch.float64)
    result = run(net, table, torch.randn(3, 1, 28, 28), budgets, random_policy(table, 1))
    assert bool((result.widths == min(BITS)).all())
    assert bool((result.bitops == budgets).all())


@pytest.mark.parametrize(
    ("granularity", "escalate"), [*((g, False) for g in GRANULARITIES), ("block", True)]
)
def test_batched_widths_equal_one_image_at_a_time(
    net: Supernet, table: CostTable, granularity: str, escalate: bool
) -> None:
    # in float64: in float32 the convolution of a batch and of one image round differently
    # (batch-size-dependent kernels), and a 1-bit activation quantizer turns a 1e-7 difference
    # at its threshold into a different level
    net = copy.deepcopy(net).double()
    policy = random_policy(table, 4, granularity, escalate).double()
    float64_forward, float64_last = policy.forward, policy.escalation_scores
    policy.forward = lambda i, features, state: float64_forward(i, features, state.double())
    policy.escalation_scores = lambda logits, state: float64_last(logits, state.double())
    gen = torch.Generator().manual_seed(2)
    n = 8
    x = torch.randn(n, 1, 28, 28, generator=gen, dtype=torch.float64)
    budgets = table.min_bitops + torch.rand(n, generator=gen, dtype=torch.float64) * (
        table.max_bitops - table.min_bitops
    )
    batched = run(net, table, x, budgets, policy)
    alone = [run(net, table, x[j : j + 1], budgets[j : j + 1], policy) for j in range(n)]
    assert torch.equal(batched.widths, torch.cat([r.widths for r in alone]))
    assert torch.allclose(batched.logits, torch.cat([r.logits for r in alone]), atol=1e-5)
    assert len({tuple(w) for w in batched.widths.tolist()}) > 1  # the choices do vary
    if escalate:
        assert torch.equal(batched.escalation, torch.cat([r.escalation for r in alone]))


def test_a_rerun_answers_as_the_static_configuration_it_amounts_to(
    net: Supernet, table: CostTable
) -> None:
    """Re-running from a block boundary reuses the first pass up to there, so the answer is
    exactly the static configuration first-pass prefix + re-run widths, and it is paid on top."""
    policy = random_policy(table, 6, "block", escalate=True)
    with torch.no_grad():  # make every option but "stop" equally likely, so re-runs happen
        policy.escalation[-1].weight.zero_()
        policy.escalation[-1].bias.copy_(torch.tensor([-1e9] + [0.0] * len(escalations_for(table))))
    gen = torch.Generator().manual_seed(6)
    n = 12
    x = torch.randn(n, 1, 28, 28, generator=gen)
    budgets = torch.full((n,), 2 * table.max_bitops, dtype=torch.float64)
    result = run(net, table, x, budgets, policy, sample=True, generator=gen)
    check_rollout(result, table, n, policy)
    assert bool((result.escalation > 0).all())
    assert len({int(o) for o in result.escalation}) > 1
    with torch.no_grad():
        static = net(x, result.widths)
    assert torch.allclose(result.logits, static, atol=1e-5)


def test_the_last_decision_is_masked_by_what_is_left_and_never_reruns_pinned_rows(
    net: Supernet, table: CostTable
) -> None:
    policy = random_policy(table, 7, "block", escalate=True)
    with torch.no_grad():  # a policy that always wants the dearest re-run
        policy.escalation[-1].weight.zero_()
        bias = torch.full((1 + len(policy.spec.escalations),), -5.0)
        bias[1] = 5.0  # (block 0, the second width): the whole network again
        policy.escalation[-1].bias.copy_(bias)
    n, layers = 4, len(table.layer_macs)
    cheapest = table.min_bitops
    rerun_cost = float(escalation_costs(table, policy.spec.escalations, torch.device("cpu"))[1])
    budgets = torch.tensor(
        [cheapest, cheapest + rerun_cost - 1, 3 * table.max_bitops, 3 * table.max_bitops],
        dtype=torch.float64,
    )
    pinned = torch.zeros(n, layers, dtype=torch.long)
    pinned[3] = min(BITS)
    result = run(net, table, torch.randn(n, 1, 28, 28), budgets, policy, pinned=pinned)
    assert bool((result.bitops[:3] <= budgets[:3]).all())
    assert result.escalation.tolist()[0] == 0  # nothing left after the cheapest pass
    assert result.escalation.tolist()[2] == 1  # room for it: taken
    assert result.escalation.tolist()[3] == 0  # pinned: run as given, once
    assert torch.equal(result.widths[3], pinned[3])


def test_pinned_rows_are_honoured(net: Supernet, table: CostTable) -> None:
    policy = random_policy(table, 3)
    n, layers = 5, len(table.layer_macs)
    gen = torch.Generator().manual_seed(3)
    pinned = torch.zeros(n, layers, dtype=torch.long)
    pinned[1] = torch.tensor(BITS)[torch.randint(0, len(BITS), (layers,), generator=gen)]
    pinned[3] = 8  # pinned above its budget: the caller asked for it, so it is run as given
    budgets = torch.full((n,), (table.min_bitops + table.max_bitops) / 2, dtype=torch.float64)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    for sample in (False, True):
        result = run(net, table, x, budgets, policy, pinned=pinned, sample=sample, generator=gen)
        check_rollout(result, table, n)
        assert torch.equal(result.widths[1], pinned[1])
        assert torch.equal(result.widths[3], pinned[3])
        free = torch.tensor([True, False, True, False, True])
        assert bool((result.bitops[free] <= budgets[free]).all())
        with torch.no_grad():
            assert torch.allclose(result.logits[3], net(x[3:4], 8)[0], atol=1e-5)
        if sample:
            assert bool(torch.isfinite(result.log_prob).all())
            assert float(result.log_prob[3]) == 0.0  # a pinned row is not the policy's doing
    # every row pinned: the policy is not consulted at all
    every = pinned.clone()
    every[every == 0] = 4
    result = run(net, table, x, budgets, policy, pinned=every)
    assert torch.equal(result.widths, every)


@pytest.mark.parametrize("with_pins", [False, True])
def test_fallback_fits_the_budget(net: Supernet, table: CostTable, with_pins: bool) -> None:
    n, layers = 7, len(table.layer_macs)
    uniform_costs = [table.cost([b] * layers) for b in BITS]
    budgets = torch.tensor(
        [table.min_bitops, *uniform_costs[1:4], uniform_costs[4] - 1, table.max_bitops, 1e12],
        dtype=torch.float64,
    )
    pinned = None
    if with_pins:
        pinned = torch.zeros(n, layers, dtype=torch.long)
        pinned[2] = BITS[1]  # narrower than the fallback's BITS[2]
    result = run(net, table, torch.randn(n, 1, 28, 28), budgets, None, pinned=pinned)
    check_rollout(result, table, n)
    assert bool((result.bitops <= budgets).all())
    # the widest uniform width that fits: BITS[0..3] exactly, BITS[3] just under BITS[4]'s cost
    fallback = [BITS[0], BITS[1], BITS[2], BITS[3], BITS[3], BITS[-1], BITS[-1]]
    expected = list(fallback)
    if with_pins:
        expected[2] = BITS[1]
    assert result.widths.tolist() == [[b] * layers for b in expected]
    assert UniformFallback(table, torch.device("cpu"))(budgets).tolist() == fallback


def test_budget_below_the_minimum_is_refused_stating_the_range(table: CostTable) -> None:
    low, high = table.min_bitops, table.max_bitops
    with pytest.raises(BudgetError) as info:
        check_budgets(table, torch.tensor([high, low * 0.99], dtype=torch.float64))
    message = str(info.value)
    assert "below the cheapest configuration" in message
    assert f"{low:.6g}" in message and f"{high:.6g}" in message
    assert info.value.min_bitops == low and info.value.max_bitops == high
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(BudgetError, match="positive finite"):
            check_budgets(table, torch.tensor([low, bad], dtype=torch.float64))
    check_budgets(table, torch.tensor([low, high, 10 * high], dtype=torch.float64))


@pytest.mark.parametrize("escalate", [False, True])
def test_policy_costs_under_one_percent_of_the_network(table: CostTable, escalate: bool) -> None:
    policy = WidthPolicy(PolicySpec.for_table(table, num_classes=10 if escalate else 0))
    assert 0 < policy.flops_per_image(table) < 0.01 * table.total_macs


def test_policy_spec_round_trips_and_features_pool(table: CostTable) -> None:
    spec = PolicySpec.for_table(table, hidden=16)
    assert PolicySpec.from_dict(spec.to_dict()) == spec
    assert spec.feature_channels == tuple(s[0] for s in table.layer_input_shapes)
    big = torch.randn(2, 16, 28, 28)
    assert torch.allclose(pooled_features(big), big[:, :, ::2, ::2].mean(dim=(2, 3)))
    small = torch.randn(2, 64, 7, 7)
    assert torch.allclose(pooled_features(small), small.mean(dim=(2, 3)))


def test_decisions_hold_until_the_next_decision_layer(net: Supernet, table: CostTable) -> None:
    assert decision_layers_for(table, "layer") == tuple(range(len(table.layer_macs)))
    assert decision_layers_for(table, "network") == (0,)
    blocks = decision_layers_for(table, "block")
    assert blocks == (0, 2, 5)  # resnet8_fmnist: conv1, conv2 | conv1, conv2, shortcut | ...
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 1, 28, 28, generator=gen)
    budgets = table.min_bitops + torch.rand(16, generator=gen, dtype=torch.float64) * (
        table.max_bitops - table.min_bitops
    )
    for granularity, starts in (("block", blocks), ("network", (0,))):
        widths = run(net, table, x, budgets, random_policy(table, 5, granularity)).widths
        ends = [*starts[1:], len(table.layer_macs)]
        for a, b in zip(starts, ends, strict=True):
            assert bool((widths[:, a:b] == widths[:, a : a + 1]).all()), (granularity, widths)
    with pytest.raises(ValueError, match="layer, block, network"):
        decision_layers_for(table, "stage")


def test_coarser_policies_cost_less(table: CostTable) -> None:
    flops = {
        g: WidthPolicy(PolicySpec.for_table(table, granularity=g)).flops_per_image(table)
        for g in GRANULARITIES
    }
    assert flops["network"] < flops["block"] < flops["layer"]


def test_a_spec_saved_before_granularity_existed_decides_at_every_layer(
    table: CostTable,
) -> None:
    old = PolicySpec.for_table(table).to_dict()
    del old["decision_layers"]
    spec = PolicySpec.from_dict(old)
    assert spec.decisions() == tuple(range(len(table.layer_macs)))
    block = PolicySpec.for_table(table, granularity="block")
    assert PolicySpec.from_dict(block.to_dict()) == block
    assert spec.escalations == () and WidthPolicy(spec).escalation is None
    with_last = PolicySpec.for_table(table, granularity="block", num_classes=10)
    assert PolicySpec.from_dict(with_last.to_dict()) == with_last
    assert with_last.escalations == escalations_for(table)
    # resnet8_fmnist has three blocks; each may be re-run at every width above the cheapest
    assert escalations_for(table) == tuple((k, b) for k in range(3) for b in BITS[1:])
