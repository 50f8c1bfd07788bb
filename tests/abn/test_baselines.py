"""abn.baselines: cascades, Pareto fronts, the oracle, checked against hand computations."""

from __future__ import annotations

import torch

from abn.baselines import CascadePoint, StaticScores, best_under, pareto_front


def scores(pred: list[int], conf: list[float], cost: float) -> StaticScores:
    return StaticScores((0,), cost, torch.tensor(pred), torch.tensor(conf))


def test_confidence_cascade_pays_both_passes_only_when_unconfident() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    cheap = scores([0, 9, 2, 9], [0.9, 0.4, 0.3, 0.95], cost=10.0)
    dear = scores([0, 1, 9, 3], [1.0, 1.0, 1.0, 1.0], cost=100.0)
    point = CascadePoint("confidence", (8,), 0.5, cost_cheap=10.0, cost_extra=100.0)
    correct, bitops = point.run(cheap, dear, labels)
    # images 1 and 2 escalate (0.4, 0.3 < 0.5): 1 becomes right, 2 becomes wrong
    assert correct.tolist() == [True, True, False, False]
    assert bitops.tolist() == [10.0, 110.0, 110.0, 10.0]
    assert point.min_budget == 110.0


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [
        {"val_mean_bitops": 1.0, "val_accuracy": 0.5},
        {"val_mean_bitops": 2.0, "val_accuracy": 0.4},  # dominated by the first
        {"val_mean_bitops": 3.0, "val_accuracy": 0.7},
        {"val_mean_bitops": 3.0, "val_accuracy": 0.6},  # same cost, worse
    ]
    front = pareto_front(points)
    assert [(p["val_mean_bitops"], p["val_accuracy"]) for p in front] == [(1.0, 0.5), (3.0, 0.7)]


def test_best_under_respects_mean_bitops_and_the_per_image_budget() -> None:
    rows = [
        {"val_mean_bitops": 5.0, "val_accuracy": 0.6, "min_budget": 50.0},
        {"val_mean_bitops": 8.0, "val_accuracy": 0.9, "min_budget": 50.0},
        {"val_mean_bitops": 6.0, "val_accuracy": 0.8, "min_budget": 500.0},
    ]
    assert best_under(rows, mean_bitops=7.0, budget=100.0) == rows[0]
    assert best_under(rows, mean_bitops=9.0, budget=100.0) == rows[1]
    assert best_under(rows, mean_bitops=7.0, budget=1000.0) == rows[2]
    assert best_under(rows, mean_bitops=4.0, budget=1000.0) is None
