"""abn.evaluate's summary tables: the uniform curve, mixing against it, width ordering."""

from __future__ import annotations

import math

import pytest

from abn.evaluate import interpolate_uniform, mixing_summary, uniform_ordering

UNIFORM = [
    {"bit_widths": [1, 1], "bitops": 10.0, "accuracy": 0.80},
    {"bit_widths": [2, 2], "bitops": 40.0, "accuracy": 0.90},
    {"bit_widths": [8, 8], "bitops": 640.0, "accuracy": 0.92},
]


def test_uniform_curve_is_log_linear_between_points_and_flat_outside() -> None:
    assert interpolate_uniform(UNIFORM, 10.0) == pytest.approx(0.80)
    assert interpolate_uniform(UNIFORM, 20.0) == pytest.approx(
        0.80 + 0.10 * math.log(2) / math.log(4)
    )
    assert interpolate_uniform(UNIFORM, 5.0) == pytest.approx(0.80)
    assert interpolate_uniform(UNIFORM, 1e4) == pytest.approx(0.92)


def test_mixing_summary_against_the_curve_and_the_cheapest_uniform() -> None:
    points = [
        {"bitops": 40.0, "accuracy": 0.89},  # 1 pt under the curve
        {"bitops": 160.0, "accuracy": 0.92},  # above the curve (0.91 there)
        {"bitops": 20.0, "accuracy": 0.78},  # worst: 2 pt under all-1
    ]
    s = mixing_summary(points, UNIFORM)
    curve_at_20 = interpolate_uniform(UNIFORM, 20.0)
    expected = ((0.89 - 0.90) + (0.92 - 0.91) + (0.78 - curve_at_20)) / 3
    assert s["mean_gap_to_uniform_curve"] == pytest.approx(expected)
    assert s["min_gap_to_uniform_curve"] == pytest.approx(0.78 - curve_at_20)
    assert s["worst_minus_cheapest_uniform"] == pytest.approx(-0.02)


def test_uniform_ordering_compares_each_width_with_the_next_narrower() -> None:
    rows = uniform_ordering(list(reversed(UNIFORM)))
    assert [(r["narrower"], r["bits"]) for r in rows] == [(1, 2), (2, 8)]
    assert [r["difference"] for r in rows] == pytest.approx([0.10, 0.02])
