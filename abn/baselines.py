"""What a user could build without the learned policy, to judge the policy against.

* **Confidence cascade**: run the cheapest uniform width; when its top-1 probability is below
  ``t``, run a dearer uniform width too and answer with it. Both passes are paid. Under a
  per-image budget ``B`` a dearer width ``b`` is allowed only when ``cost(min) + cost(b) <= B``.
* **Layer-wise cascade**: run the cheapest uniform width; when unconfident, re-run from a
  block boundary ``k`` at a dearer width ``b``, reusing the cheap pass up to ``k``. Its answer is
  the static configuration ``[min] * k + [b] * (L - k)`` (the reused prefix is exactly that), its
  cost the cheap pass plus layers ``k..L-1`` at ``b``.
* **Oracle** (an upper bound, never a target): per image, the cheapest of a list of static
  configurations that classifies it correctly.

Every threshold and choice comes from the validation split; the chosen operating points are
then scored on the test split. A point's figures on both splits are kept, so a report can show
how far the validation choice carried over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from abn.bitops import CostTable
from abn.data import EVALUATION_BATCH_SIZE, ImageSet, iterate_batches
from abn.preprocess import InputSpec, Normalizer
from abn.stats import paired_difference
from abn.supernet import Supernet

THRESHOLD_QUANTILES = 41  # thresholds tried per cascade: quantiles of the cheap confidence


@dataclass(frozen=True)
class StaticScores:
    """One static configuration's answers on one split: predicted label and top-1 probability
    per image."""

    config: tuple[int, ...]
    bitops: float
    predicted: torch.Tensor  # (N,) int64
    confidence: torch.Tensor  # (N,) float32

    def correct(self, labels: torch.Tensor) -> torch.Tensor:
        return self.predicted == labels


@torch.no_grad()
def score_static(
    net: Supernet,
    table: CostTable,
    data: ImageSet,
    input_spec: InputSpec,
    config: Sequence[int],
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> StaticScores:
    device = next(net.parameters()).device
    normalize = Normalizer.for_spec(input_spec, device)
    preds, confs = [], []
    for images, _ in iterate_batches(data, batch_size, shuffle=False):
        probs = torch.softmax(net(normalize(images.to(device)), list(config)), 1)
        conf, pred = probs.max(dim=1)
        preds.append(pred.cpu())
        confs.append(conf.cpu())
    return StaticScores(tuple(config), table.cost(config), torch.cat(preds), torch.cat(confs))


@dataclass(frozen=True)
class CascadePoint:
    """One operating point of a cascade: escalate to ``dear`` when confidence < ``threshold``."""

    family: str  # "confidence" or "layerwise"
    dear: tuple[int, ...]  # the configuration an unconfident image is answered with
    threshold: float
    cost_cheap: float
    cost_extra: float  # paid on top of the cheap pass by an escalated image

    @property
    def min_budget(self) -> float:
        """The per-image budget an escalation needs."""
        return self.cost_cheap + self.cost_extra

    def run(
        self, cheap: StaticScores, dear: StaticScores, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image correctness and BitOps of this cascade on one split."""
        escalate = cheap.confidence < self.threshold
        correct = torch.where(escalate, dear.correct(labels), cheap.correct(labels))
        bitops = self.cost_cheap + escalate.double() * self.cost_extra
        return correct, bitops


def pareto_front(points: list[dict], x: str = "val_mean_bitops", y: str = "val_accuracy") -> list:
    """The points no other point beats on both mean BitOps (lower) and accuracy (higher)."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p[x], -p[y])):
        if p[y] > best:
            front.append(p)
            best = p[y]
    return front


def thresholds_for(cheap: StaticScores) -> list[float]:
    """Candidate thresholds: quantiles of the cheap pass's confidence (plus never/always)."""
    qs = torch.linspace(0, 1, THRESHOLD_QUANTILES, dtype=torch.float64)
    values = torch.quantile(cheap.confidence.double(), qs).tolist()
    return sorted({0.0, *values, 1.0 + 1e-9})


def cascade_points(
    table: CostTable, cheapest: int, boundaries: Sequence[int]
) -> list[CascadePoint]:
    """Every (family, dearer configuration) a cascade can escalate to, threshold left at 0."""
    n = len(table.layer_macs)
    cheap_cost = table.cost([cheapest] * n)
    out = []
    for bits in sorted(b for b in table.bit_candidates if b > cheapest):
        uniform = (bits,) * n
        out.append(CascadePoint("confidence", uniform, 0.0, cheap_cost, table.cost(uniform)))
        for k in boundaries:
            dear = (cheapest,) * k + (bits,) * (n - k)
            extra = sum(table.layer_cost(i, bits) for i in range(k, n))
            out.append(CascadePoint("layerwise", dear, 0.0, cheap_cost, extra))
    return out


class BaselineSuite:
    """Scores static configurations on validation and test once each, and builds every
    baseline family from them (thresholds chosen on validation, figures on both splits)."""

    def __init__(
        self, net: Supernet, table: CostTable, val: ImageSet, test: ImageSet, spec: InputSpec
    ) -> None:
        self.net, self.table, self.spec = net, table, spec
        self.splits = {"val": val, "test": test}
        self._cache: dict[tuple[str, tuple[int, ...]], StaticScores] = {}
        self.cheapest = min(table.bit_candidates)
        self.cheap_config = (self.cheapest,) * len(table.layer_macs)

    def scores(self, split: str, config: Sequence[int]) -> StaticScores:
        key = (split, tuple(config))
        if key not in self._cache:
            data = self.splits[split]
            self._cache[key] = score_static(self.net, self.table, data, self.spec, config)
        return self._cache[key]

    def labels(self, split: str) -> torch.Tensor:
        return self.splits[split].labels

    def evaluate_point(self, point: CascadePoint) -> dict:
        row: dict = {
            "family": point.family,
            "dear": list(point.dear),
            "threshold": point.threshold,
            "min_budget": point.min_budget,
        }
        for split in ("val", "test"):
            correct, bitops = point.run(
                self.scores(split, self.cheap_config),
                self.scores(split, point.dear),
                self.labels(split),
            )
            prefix = "val_" if split == "val" else ""
            row[f"{prefix}accuracy"] = float(correct.double().mean())
            row[f"{prefix}mean_bitops"] = float(bitops.mean())
        return row

    def cascades(self) -> dict[str, list[dict]]:
        """The validation Pareto front of each cascade family, with test figures."""
        families: dict[str, list[dict]] = {"confidence": [], "layerwise": []}
        cheap_val = self.scores("val", self.cheap_config)
        boundaries = self.net.block_first_layers()[1:]
        for template in cascade_points(self.table, self.cheapest, boundaries):
            for t in thresholds_for(cheap_val):
                point = CascadePoint(
                    template.family, template.dear, t, template.cost_cheap, template.cost_extra
                )
                families[point.family].append(self.evaluate_point(point))
        return {name: pareto_front(points) for name, points in families.items()}

    def correct_of(self, row: dict, split: str = "test") -> torch.Tensor:
        """Per-image correctness of a cascade row (from :meth:`cascades`) on a split."""
        point = CascadePoint(
            row["family"],
            tuple(row["dear"]),
            row["threshold"],
            self.table.cost(self.cheap_config),
            row["min_budget"] - self.table.cost(self.cheap_config),
        )
        cheap = self.scores(split, self.cheap_config)
        return point.run(cheap, self.scores(split, point.dear), self.labels(split))[0]

    def oracle(self, configs: Sequence[Sequence[int]], split: str = "test") -> dict:
        """Per image, the cheapest listed configuration that is right (else the cheapest)."""
        ordered = sorted({tuple(c) for c in configs}, key=self.table.cost)
        labels = self.labels(split)
        right = torch.stack([self.scores(split, c).correct(labels) for c in ordered])
        costs = torch.tensor([self.table.cost(c) for c in ordered], dtype=torch.float64)
        first = torch.where(right.any(0), right.double().argmax(0), torch.zeros_like(labels))
        return {
            "configs": len(ordered),
            "accuracy": float(right.any(0).double().mean()),
            "mean_bitops": float(costs[first].mean()),
        }


def best_under(rows: list[dict], mean_bitops: float, budget: float) -> dict | None:
    """The validation-best row whose validation mean BitOps are at most ``mean_bitops`` and
    whose per-image cost fits ``budget``."""
    fits = [
        r
        for r in rows
        if r["val_mean_bitops"] <= mean_bitops * (1 + 1e-12)
        and r.get("min_budget", r.get("bitops", 0.0)) <= budget * (1 + 1e-12)
    ]
    return max(fits, key=lambda r: r["val_accuracy"]) if fits else None


def _against(
    name: str, row: dict | None, adaptive: torch.Tensor, other: torch.Tensor | None
) -> dict:
    if row is None or other is None:
        return {"baseline": name, "available": False}
    return {
        "baseline": name,
        "available": True,
        "accuracy": row["accuracy"],
        "mean_bitops": row["mean_bitops"],
        "choice": {k: row[k] for k in ("bit_widths", "dear", "threshold") if k in row},
        **paired_difference(adaptive, other),
    }


def compare_with_baselines(
    suite: BaselineSuite,
    adaptive_test: list[dict],
    adaptive_val: list[dict],
    static_rows: list[dict],
    cascades: dict[str, list[dict]],
) -> list[dict]:
    """Per budget: the policy against the validation-best static configuration of no greater
    cost, and the validation-best cascade of each family whose validation mean BitOps are no
    greater than the policy's and whose escalation fits the budget; paired test intervals."""
    rows = []
    for test_row, val_row in zip(adaptive_test, adaptive_val, strict=True):
        budget, correct = test_row["budget"], test_row["correct"]
        static = best_under(static_rows, test_row["mean_bitops"], budget)
        static_correct = (
            None
            if static is None
            else suite.scores("test", static["bit_widths"]).correct(suite.labels("test"))
        )
        versus = [_against("best static", static, correct, static_correct)]
        for family, front in cascades.items():
            pick = best_under(front, val_row["mean_bitops"], budget)
            other = None if pick is None else suite.correct_of(pick)
            versus.append(_against(f"{family} cascade", pick, correct, other))
        rows.append(
            {
                "budget": budget,
                "accuracy": test_row["accuracy"],
                "mean_bitops": test_row["mean_bitops"],
                "versus": versus,
            }
        )
    return rows
