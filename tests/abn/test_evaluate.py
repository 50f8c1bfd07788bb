"""The evaluation tables: exact accuracies and the adaptive-against-static comparison."""

from __future__ import annotations

import torch

from abn.bitops import cost_table
from abn.data import ImageSet
from abn.evaluate import (
    budgets_across,
    compare_adaptive,
    greedy_static_search,
    predictions,
    static_accuracy,
)
from abn.preprocess import InputSpec
from abn.supernet import build_supernet
from tests.nets import calibrate

SPEC = InputSpec(channels=1, height=28, width=28, mean=(0.5,), std=(0.25,))


def _images(n: int = 7) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageSet(images, labels, [str(i) for i in range(10)])


def test_static_accuracy_is_an_exact_fraction() -> None:
    torch.manual_seed(0)
    net = calibrate(build_supernet("resnet8_fmnist")).fold_for_inference()
    data = _images(7)
    predicted = predictions(net, data, SPEC, net.uniform(2))
    labels = torch.where(torch.arange(7) < 3, predicted, (predicted + 1) % 10)  # 3 of 7 right
    accuracy = static_accuracy(net, ImageSet(data.images, labels, data.classes), SPEC, [2] * 8)
    assert accuracy == 3 / 7  # exactly: a float32 mean would be 0.4285714328...


def test_equal_accuracy_saves_nothing_against_the_same_cost() -> None:
    static = [
        {"bit_widths": [2], "bitops": 100.0, "accuracy": 9084 / 10000},
        {"bit_widths": [4], "bitops": 400.0, "accuracy": 9086 / 10000},
    ]
    adaptive = [{"budget": 100.0, "mean_bitops": 100.0, "accuracy": 9084 / 10000}]
    (row,) = compare_adaptive(adaptive, static)
    assert row["bitops_saving_at_equal_accuracy"] == 0.0
    assert row["gain_at_equal_mean_bitops"] == 0.0


def test_saving_and_gain_against_the_right_static_configurations() -> None:
    static = [
        {"bit_widths": [2], "bitops": 100.0, "accuracy": 0.80},
        {"bit_widths": [8], "bitops": 1000.0, "accuracy": 0.90},
    ]
    adaptive = [{"budget": 1000.0, "mean_bitops": 400.0, "accuracy": 0.90}]
    (row,) = compare_adaptive(adaptive, static)
    assert row["best_static_within_budget"] == 0.90
    assert row["best_static_within_mean_bitops"] == 0.80
    assert abs(row["gain_at_equal_mean_bitops"] - 0.10) < 1e-12
    assert abs(row["bitops_saving_at_equal_accuracy"] - 0.6) < 1e-12


def test_budgets_span_the_feasible_range() -> None:
    table = cost_table(calibrate(build_supernet("resnet8_fmnist")))
    budgets = budgets_across(table, 8)
    assert len(budgets) == 8
    assert budgets[0] == table.min_bitops
    assert abs(budgets[-1] - table.max_bitops) <= 1e-6 * table.max_bitops
    assert budgets == sorted(budgets)


def test_static_search_walks_from_all_max_to_all_min_cheaper_each_step() -> None:
    torch.manual_seed(0)
    spec = "resnet8_fmnist"
    net = calibrate(build_supernet(spec)).fold_for_inference()
    table = cost_table(net)
    path = greedy_static_search(net, table, _images(5), SPEC)
    bits = sorted(net.bit_candidates)
    assert path[0]["bit_widths"] == net.uniform(bits[-1])
    assert path[-1]["bit_widths"] == net.uniform(bits[0])
    assert len(path) == 1 + net.num_switchable * (len(bits) - 1)
    costs = [p["bitops"] for p in path]
    assert all(a > b for a, b in zip(costs, costs[1:], strict=False))
