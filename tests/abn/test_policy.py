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
    PolicySpec,
    WidthPolicy,
    check_budgets,
    decision_layers_for,
    pooled_features,
    rollout,
    uniform_fallback,
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


def random_policy(table: CostTable, seed: int, granularity: str = "layer") -> WidthPolicy:
    """A policy whose choices depend on the image and the budget (a fresh one's head is zero,
    so it would always pick the same widths)."""
    torch.manual_seed(seed)
    policy = WidthPolicy(PolicySpec.for_table(table, granularity=granularity)).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0.0, 1.0)
    return policy


def run(net: Supernet, table: CostTable, x: torch.Tensor, budgets: torch.Tensor, policy, **kw):
    with torch.no_grad():
        return rollout(net, table, x, budgets, policy, **kw)


def check_rollout(result, table: CostTable, n: int) -> None:
    assert result.widths.shape == (n, len(table.layer_macs))
    assert bool(torch.isin(result.widths, torch.tensor(BITS)).all())
    assert torch.equal(result.bitops, table.batch_cost(result.widths))  # spent = real cost
    assert result.logits.shape == (n, 10)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
    sample=st.booleans(),
    granularity=st.sampled_from(GRANULARITIES),
)
def test_rollout_never_exceeds_the_budget(
    net: Supernet,
    table: CostTable,
    seed: int,
    fractions: list[float],
    sample: bool,
    granularity: str,
) -> None:
    low, high = table.min_bitops, 2 * table.max_bitops
    budgets = torch.tensor([low + f * (high - low) for f in fractions], dtype=torch.float64)
    budgets = budgets.clamp(low, high)
    policy = random_policy(table, seed, granularity)
    x = torch.randn(len(fractions), 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    result = run(net, table, x, budgets, policy, sample=sample, generator=gen)
    check_rollout(result, table, len(fractions))
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


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_batched_widths_equal_one_image_at_a_time(
    net: Supernet, table: CostTable, granularity: str
) -> None:
    # in float64: in float32 the convolution of a batch and of one image round differently
    # (batch-size-dependent kernels), and a 1-bit activation quantizer turns a 1e-7 difference
    # at its threshold into a different level
    net = copy.deepcopy(net).double()
    policy = random_policy(table, 4, granularity).double()
    float64_forward = policy.forward
    policy.forward = lambda i, features, state: float64_forward(i, features, state.double())
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
    assert uniform_fallback(table, budgets).tolist() == fallback


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


def test_policy_costs_under_one_percent_of_the_network(table: CostTable) -> None:
    policy = WidthPolicy(PolicySpec.for_table(table))
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
