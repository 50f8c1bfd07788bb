"""The accuracy the model card predicts for a configuration, for ``abn_expected_accuracy``.

The model card holds two measured tables (see ``abn evaluate``): ``adaptive`` (accuracy of the
policy at a budget) and ``static`` (accuracy at a fixed configuration). An adaptive request is
looked up in the adaptive table by its budget, a pinned one in the static table by its exact
configuration, else by its BitOps; both interpolate linearly and clamp at the table's ends.
Comparing this prediction with live accuracy from ``/feedback`` tells whether the traffic
still looks like the test set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _points(rows: Sequence[dict[str, Any]], x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(x, accuracy)`` arrays, duplicates of ``x`` averaged, bad rows skipped."""
    by_x: dict[float, list[float]] = {}
    for row in rows:
        try:
            x, acc = float(row[x_key]), float(row["accuracy"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(acc):
            by_x.setdefault(x, []).append(acc)
    xs = sorted(by_x)
    return np.array(xs, dtype=np.float64), np.array(
        [sum(by_x[x]) / len(by_x[x]) for x in xs], dtype=np.float64
    )


class AccuracyTables:
    """Lookups into a manifest's ``accuracy`` section."""

    def __init__(self, accuracy: dict[str, Any] | None) -> None:
        accuracy = accuracy or {}
        self.static: list[dict[str, Any]] = list(accuracy.get("static") or [])
        self.adaptive: list[dict[str, Any]] = list(accuracy.get("adaptive") or [])
        self.baselines: dict[str, Any] | None = accuracy.get("baselines")
        self._adaptive_x, self._adaptive_y = _points(self.adaptive, "budget")
        self._static_x, self._static_y = _points(self.static, "bitops")
        self._exact: dict[tuple[int, ...], float] = {}
        for row in self.static:
            try:
                self._exact[tuple(int(b) for b in row["bit_widths"])] = float(row["accuracy"])
            except (KeyError, TypeError, ValueError):
                continue

    def for_budget(self, budget: float) -> float | None:
        """Predicted accuracy of the policy at ``budget`` (adaptive table)."""
        if len(self._adaptive_x) == 0:
            return None
        return float(np.interp(budget, self._adaptive_x, self._adaptive_y))

    def for_config(self, widths: Sequence[int], bitops: float) -> float | None:
        """Predicted accuracy of a fixed configuration (static table: exact, else by BitOps)."""
        exact = self._exact.get(tuple(int(b) for b in widths))
        if exact is not None:
            return exact
        if len(self._static_x) == 0:
            return None
        return float(np.interp(bitops, self._static_x, self._static_y))

    def expected(
        self, *, pinned: bool, budget: float, widths: Sequence[int], bitops: float
    ) -> float | None:
        """What the card predicts for one answered request; None when it has no table."""
        if not pinned:
            predicted = self.for_budget(budget)
            if predicted is not None:
                return predicted
        return self.for_config(widths, bitops)
