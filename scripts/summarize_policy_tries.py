"""One line per policy try from the ``report.json`` files ``abn evaluate`` wrote (docs/results.md).

Accuracies are re-read as exact fractions of the 10,000 test images (reports written before the
float32 fix stored static accuracies such as 0.9083999991), then compared with
``abn.evaluate.compare_adaptive`` against the uniform configurations of the same report:

    .venv/bin/python scripts/summarize_policy_tries.py runs/exp/A-eval runs/exp/N2-eval ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from abn.evaluate import compare_adaptive


def exact(accuracy: float, images: int) -> float:
    return round(accuracy * images) / images


def summarize(report_dir: Path) -> str:
    report = json.loads((report_dir / "report.json").read_text())
    n = report["test_images"]
    static = [{**s, "accuracy": exact(s["accuracy"], n)} for s in report["static_uniform"]]
    adaptive = [{**a, "accuracy": exact(a["accuracy"], n)} for a in report["adaptive"]]
    rows = compare_adaptive(adaptive, static)
    worst = min(r["gain_vs_static_within_budget"] for r in rows)
    gain = max(r["gain_at_equal_mean_bitops"] for r in rows)
    saving = max(r["bitops_saving_at_equal_accuracy"] or 0.0 for r in rows)
    configs = max(a["distinct_configs"] for a in report["adaptive"])
    violations = sum(a["violations"] for a in report["adaptive"])
    return (
        f"{report_dir}: worst gap vs best uniform within budget {100 * worst:+.2f} pt, "
        f"best gain at equal mean BitOps {100 * gain:+.2f} pt, best saving {100 * saving:.1f} %, "
        f"most distinct configurations at one budget {configs}, violations {violations}"
    )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summarize(Path(arg)))
