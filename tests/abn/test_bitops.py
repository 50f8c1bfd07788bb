"""abn.bitops: the cost table against an independent count taken from the real forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from abn.bitops import cost_table
from abn.layers import FixedConvBN, FixedLinear, SwitchableConvBN
from abn.supernet import DEFAULT_BIT_CANDIDATES, Supernet, build_supernet
from tests.nets import give_bn_statistics

BITS = DEFAULT_BIT_CANDIDATES


def ready_net(name: str) -> Supernet:
    """A random network that may run in eval mode (every BN pair has statistics)."""
    torch.manual_seed(0)
    return give_bn_statistics(build_supernet(name)).eval()


class HookCounter:
    """BitOps per sample counted from every real layer call: MACs from the layer's weight
    shape and its output shape, times the width it was called with, squared (the stem and the
    classifier at 8 x 8). A call on a group of k samples counts k times."""

    def __init__(self, net: Supernet) -> None:
        self.total = 0
        self.calls = 0
        self.handles = [
            m.register_forward_hook(self.hook)
            for m in net.modules()
            if isinstance(m, SwitchableConvBN | FixedConvBN | FixedLinear)
        ]

    def hook(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        weight = module.weight
        if isinstance(module, FixedLinear):
            out_features, in_features = weight.shape
            assert output.shape[1] == out_features
            macs = out_features * in_features
            bits = 8
        else:
            out_ch, in_ch, kh, kw = weight.shape
            _, c, h, w = output.shape
            assert c == out_ch
            macs = out_ch * h * w * in_ch * kh * kw
            bits = int(args[1]) if isinstance(module, SwitchableConvBN) else 8
        self.total += output.shape[0] * macs * bits * bits
        self.calls += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def hook_count(net: Supernet, x: torch.Tensor, config: object) -> tuple[int, int]:
    counter = HookCounter(net)
    try:
        with torch.no_grad():
            net(x, config)
    finally:
        counter.close()
    return counter.total, counter.calls


@pytest.mark.parametrize(
    ("name", "configs"),
    [("resnet8_fmnist", 12), ("resnet20_cifar", 5), ("resnet18_imagenet", 3)],
)
def test_cost_equals_an_independent_hook_count(name: str, configs: int) -> None:
    net = ready_net(name)
    table = cost_table(net)
    spec = net.spec
    x = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size)
    gen = torch.Generator().manual_seed(len(name))
    n = net.num_switchable
    picks = [
        [BITS[i] for i in torch.randint(0, len(BITS), (n,), generator=gen).tolist()]
        for _ in range(configs)
    ]
    picks += [net.uniform(1), net.uniform(8)]
    for config in picks:
        counted, calls = hook_count(net, x, config)
        assert calls == n + 2  # every switchable layer, the stem and the classifier
        assert table.cost(config) == counted, config
    assert table.min_bitops == table.cost(net.uniform(1))
    assert table.max_bitops == table.cost(net.uniform(8))
    assert table.min_bitops < table.max_bitops


def test_configurations_with_one_bit_layers_match_an_independent_hook_count() -> None:
    net = ready_net("resnet8_fmnist")
    table = cost_table(net)
    n = net.num_switchable
    gen = torch.Generator().manual_seed(1)
    configs = [
        net.uniform(1),
        [1, 8] * (n // 2),
        [8] * (n - 1) + [1],
        [1] + [2] * (n - 1),
    ]
    for _ in range(4):  # random mixes, each with at least two 1-bit layers
        config = [BITS[i] for i in torch.randint(0, len(BITS), (n,), generator=gen).tolist()]
        for i in torch.randperm(n, generator=gen)[:2].tolist():
            config[i] = 1
        configs.append(config)
    x = torch.randn(1, 1, 28, 28)
    for config in configs:
        assert 1 in config
        counted, calls = hook_count(net, x, config)
        assert calls == n + 2
        assert table.cost(config) == counted, config
    # a 1-bit layer costs its MACs once (1 x 1), the fixed layers 64 times theirs
    all_one = table.cost(net.uniform(1))
    assert all_one == sum(table.layer_macs) + 64 * table.fixed_macs == table.min_bitops
    # and in one batch of per-sample configurations, grouped by width inside each layer
    batch = torch.tensor(configs)
    counted, _ = hook_count(net, torch.randn(len(configs), 1, 28, 28), batch)
    assert float(table.batch_cost(batch).sum()) == counted


def test_batch_cost_matches_hook_count_per_sample() -> None:
    net = ready_net("resnet8_fmnist")
    table = cost_table(net)
    gen = torch.Generator().manual_seed(5)
    configs = torch.tensor(BITS)[
        torch.randint(0, len(BITS), (5, net.num_switchable), generator=gen)
    ]
    x = torch.randn(5, 1, 28, 28)
    per_sample = table.batch_cost(configs)
    assert per_sample.dtype == torch.float64
    for j in range(5):
        assert float(per_sample[j]) == table.cost(configs[j].tolist())
    counted, _ = hook_count(net, x, configs)  # grouped by width inside each layer
    assert float(per_sample.sum()) == counted


def test_fashion_mnist_model_table() -> None:
    net = ready_net("resnet8_fmnist")
    table = cost_table(net)
    assert table.layer_names == tuple(net.layer_names)
    # 3x3 conv 16->16 on 28x28, and the 1x1 stride-2 shortcut 16->32 onto 14x14
    assert table.layer_macs[0] == 16 * 16 * 9 * 28 * 28
    assert table.layer_macs[4] == 32 * 16 * 14 * 14
    # stem 1->16 3x3 on 28x28 plus classifier 64->10
    assert table.fixed_macs == 16 * 9 * 28 * 28 + 64 * 10
    assert table.fixed_bitops == table.fixed_macs * 64
    assert table.total_macs == table.fixed_macs + sum(table.layer_macs)
    assert table.layer_input_shapes[0] == (16, 28, 28)
    assert table.layer_cost(1, 3) == table.layer_macs[1] * 9
    tail = table.min_remaining()
    assert len(tail) == net.num_switchable + 1 and tail[-1] == 0.0
    assert math.isclose(tail[0] + table.fixed_bitops, table.min_bitops)
    d = table.to_dict()
    assert [layer["macs"] for layer in d["layers"]] == list(table.layer_macs)
    with pytest.raises(ValueError, match="expected 8 widths"):
        table.cost([4] * 7)


def test_cost_table_keeps_the_training_mode() -> None:
    net = ready_net("resnet8_fmnist").train()
    cost_table(net)
    assert net.training


def test_cost_table_needs_no_batch_norm_statistics() -> None:
    net = build_supernet("resnet8_fmnist")  # fresh: no BN pair has statistics yet
    assert cost_table(net).total_macs > 0
