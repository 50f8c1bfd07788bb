"""abn.calibrate: every transitional BN pair gets statistics, a balanced number of batches each."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from abn.calibrate import balanced_round, calibrate_batch_norm, check_calibrated, feeding_depths
from abn.errors import UncalibratedBatchNormError
from abn.supernet import DEFAULT_BIT_CANDIDATES, Supernet, architecture, build_supernet
from tests.nets import feeder_widths, give_bn_statistics, random_batches

BITS = DEFAULT_BIT_CANDIDATES


def small_net(
    name: str = "resnet8_fmnist", bits: tuple[int, ...] = BITS, **spec: object
) -> Supernet:
    torch.manual_seed(0)
    return build_supernet(architecture(name, bit_candidates=list(bits), **spec))


def pair_counts(net: Supernet, configs: list[list[int]]) -> list[Counter]:
    """Per layer, how often each (feeder width, own width) pair ran over ``configs``."""
    counts = [Counter() for _ in net.switchable_layers]
    for config in configs:
        for i, pair in enumerate(zip(feeder_widths(net, config), config, strict=True)):
            counts[i][pair] += 1
    return counts


def test_feeding_depths_follow_the_blocks() -> None:
    # resnet8_fmnist: block 1 (conv1, conv2), blocks 2 and 3 (conv1, conv2, shortcut)
    assert feeding_depths(small_net()) == [0, 1, 2, 3, 2, 4, 5, 4]


@pytest.mark.parametrize(
    ("name", "bits"),
    [("resnet8_fmnist", BITS), ("resnet20_cifar", BITS), ("resnet8_fmnist", (2, 4, 8))],
    ids=["resnet8", "resnet20", "three-widths"],
)
def test_balanced_round_covers_every_pair_of_every_layer_exactly_once(
    name: str, bits: tuple[int, ...]
) -> None:
    net = small_net(name, bits)
    n = len(bits)
    gen = torch.Generator().manual_seed(0)
    rounds = [balanced_round(net, gen) for _ in range(3)]
    every_pair = {(i, b): 1 for i in bits for b in bits}
    for configs in rounds:
        assert len(configs) == n * n
        assert all(len(c) == net.num_switchable and set(c) <= set(bits) for c in configs)
        for layer, counts in zip(net.switchable_layers, pair_counts(net, configs), strict=True):
            if layer.input_widths == (net.spec.fixed_bits,):  # fed by the stem
                assert counts == {(net.spec.fixed_bits, b): n for b in bits}, layer.name
            else:
                assert counts == every_pair, layer.name
    assert rounds[0] != rounds[1]  # fresh permutations and order every round


@pytest.mark.parametrize("rounds", [1, 2])
def test_calibration_gives_every_pair_exactly_rounds_batches(rounds: int) -> None:
    net = give_bn_statistics(small_net(), seed=1)  # stale statistics are reset, not added to
    params = {k: v.clone() for k, v in net.named_parameters()}
    report = calibrate_batch_norm(
        net, random_batches(net, batch_size=4), rounds=rounds, seed=0, progress=False
    )
    n = len(BITS)
    assert report["batches"] == rounds * n * n and report["batches_per_pair"] == rounds
    assert not net.training
    for layer in net.switchable_layers:
        assert layer.bn.unseen_pairs() == []
        for in_bits in layer.input_widths:
            for bits in BITS:
                bn = layer.bn.norm_for(in_bits, bits)
                # a stem-fed layer sees each of its widths n times a round (one feeder only)
                expected = rounds * (n if layer.input_widths == (net.spec.fixed_bits,) else 1)
                assert int(bn.num_batches_tracked) == expected, (layer.name, in_bits, bits)
                assert bn.momentum == 0.1  # restored after the cumulative average
    check_calibrated(net)
    # calibration estimates statistics only: no weight, step or clip level moved
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())


@pytest.mark.parametrize("mode", ["per_width", "shared"])
def test_calibration_of_the_ablation_layouts(mode: str) -> None:
    net = small_net(batch_norm=mode)
    calibrate_batch_norm(net, random_batches(net, batch_size=4), rounds=1, progress=False)
    n = len(BITS)
    for layer in net.switchable_layers[1:]:  # fed by a switchable layer
        counts = {int(bn.num_batches_tracked) for bn in layer.bn.norms.values()}
        assert counts == ({n} if mode == "per_width" else {n * n}), layer.name


def test_calibration_is_deterministic() -> None:
    states = []
    for _ in range(2):
        net = small_net()
        calibrate_batch_norm(
            net, random_batches(net, batch_size=4, seed=3), rounds=1, seed=5, progress=False
        )
        states.append(net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_batches_running_dry_leave_pairs_unseen_and_raise() -> None:
    net = small_net()
    few = (torch.randn(4, 1, 28, 28) for _ in range(5))  # 36 needed
    with pytest.raises(UncalibratedBatchNormError) as info:
        calibrate_batch_norm(net, few, rounds=1, progress=False)
    assert info.value.layer in net.layer_names and info.value.pairs
    assert not net.training


def test_check_calibrated_names_the_first_layer_with_an_unseen_pair() -> None:
    net = give_bn_statistics(small_net())
    check_calibrated(net)
    layer = net.switchable_layers[3]
    layer.bn.norm_for(2, 3).num_batches_tracked.zero_()
    with pytest.raises(UncalibratedBatchNormError) as info:
        check_calibrated(net)
    assert info.value.layer == layer.name and info.value.pairs == [(2, 3)]
    assert layer.name in str(info.value) and "2->3" in str(info.value)
