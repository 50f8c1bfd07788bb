"""Choose between trained policies on the validation split (never the test set).

For each model directory: the policy's accuracy and mean BitOps at the budgets ``abn evaluate``
uses, on the 5,000 validation images, and the mean accuracy over those budgets, the figure
the choice is made on. One line per budget and directory:

    .venv/bin/python scripts/compare_policies_val.py runs/p-layer runs/p-network
"""

from __future__ import annotations

import argparse

from abn.bitops import cost_table
from abn.data import load_fashion_mnist
from abn.evaluate import adaptive_accuracy, budgets_across
from abn.store import open_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--budgets", type=int, default=10)
    args = parser.parse_args()
    val = load_fashion_mnist("val")
    for path in args.models:
        md = open_model_dir(path)
        net = md.load_supernet().fold_for_inference()
        policy = md.load_policy()
        table = cost_table(net)
        rows = [
            adaptive_accuracy(net, table, policy, val, md.input_spec, b)
            for b in budgets_across(table, args.budgets)
        ]
        for r in rows:
            print(
                f"{path}: budget {r['budget']:.4g} mean BitOps {r['mean_bitops']:.4g} "
                f"val accuracy {100 * r['accuracy']:.2f} % violations {r['violations']}"
            )
        mean = sum(r["accuracy"] for r in rows) / len(rows)
        print(f"{path}: mean val accuracy over budgets {100 * mean:.2f} %")


if __name__ == "__main__":
    main()
