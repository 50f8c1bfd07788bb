"""Choose between trained policies on the validation split (never the test set).

For each model directory (all holding the same supernet): the policy's accuracy and mean
BitOps at the budgets ``abn evaluate`` uses, on the 5,000 validation images, and its margin
over the best baseline a user could build there: the validation-best static configuration
(uniform, or from the greedy search ``abn evaluate`` runs) and cascade of either family whose
validation mean BitOps are no greater than the policy's and whose per-image cost fits the
budget. The choice is made on the worst and the mean margin over the budgets:

    .venv/bin/python scripts/compare_policies_val.py runs/esc-0.5 runs/esc-0.3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from abn.baselines import BaselineSuite, best_under
from abn.bitops import cost_table
from abn.data import load_fashion_mnist
from abn.evaluate import adaptive_accuracy, budgets_across, greedy_static_search, static_row
from abn.policy import CompiledPolicy
from abn.store import open_model_dir


def baseline_rows(suite: BaselineSuite, search_images: int) -> list[dict]:
    """Static rows (uniform and searched) and both cascade fronts, with validation figures."""
    net, val = suite.net, suite.splits["val"]
    configs = [net.uniform(b) for b in net.bit_candidates]
    searched = greedy_static_search(
        net, suite.table, val.subset(slice(0, search_images)), suite.spec
    )
    configs += [p["bit_widths"] for p in searched]
    rows = [static_row(suite, c) for c in configs]
    for front in suite.cascades().values():
        rows += front
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--budgets", type=int, default=10)
    parser.add_argument("--search-images", type=int, default=2000)
    parser.add_argument(
        "--baselines-cache",
        type=Path,
        default=None,
        help="JSON file the baseline rows are read from if it exists, else written to "
        "(they depend on the supernet only, not on the policies compared)",
    )
    args = parser.parse_args()
    val, test = load_fashion_mnist("val"), load_fashion_mnist("test")
    first = open_model_dir(args.models[0])
    net = first.load_supernet().fold_for_inference()
    table = cost_table(net)
    suite = BaselineSuite(net, table, val, test, first.input_spec)
    if args.baselines_cache and args.baselines_cache.is_file():
        baselines = json.loads(args.baselines_cache.read_text())
    else:
        baselines = baseline_rows(suite, args.search_images)
        if args.baselines_cache:
            args.baselines_cache.write_text(json.dumps(baselines))
    for path in args.models:
        md = open_model_dir(path)
        compiled = CompiledPolicy(net, table, md.load_policy(), torch.device("cpu"))
        margins = []
        for budget in budgets_across(table, args.budgets):
            r = adaptive_accuracy(compiled, val, md.input_spec, budget)
            best = best_under(baselines, r["mean_bitops"], budget)
            margin = r["accuracy"] - (best["val_accuracy"] if best else 0.0)
            margins.append(margin)
            print(
                f"{path}: budget {budget:.4g} mean BitOps {r['mean_bitops']:.4g} "
                f"val accuracy {100 * r['accuracy']:.2f} % re-run {100 * r['rerun_fraction']:.1f} %"
                f" violations {r['violations']} margin over best baseline {100 * margin:+.2f} pt"
            )
        print(
            f"{path}: worst margin {100 * min(margins):+.2f} pt, "
            f"mean margin {100 * sum(margins) / len(margins):+.2f} pt"
        )


if __name__ == "__main__":
    main()
