"""Random per-layer configurations drawn without the 1-bit width, against the uniform curve.

``abn evaluate`` draws random configurations from the whole candidate set; this draws them from
the set without its narrowest width, on the same test images, to separate how well the wider
widths mix from how well the 1-bit mode mixes (docs/results.md):

    .venv/bin/python scripts/mixing_without_one_bit.py --model model_store/fmnist-abn --configs 30
"""

from __future__ import annotations

import argparse
import json
import random

from abn.bitops import cost_table
from abn.data import load_fashion_mnist
from abn.evaluate import mixing_summary, static_accuracy
from abn.store import open_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="model_store/fmnist-abn")
    parser.add_argument("--configs", type=int, default=30)
    args = parser.parse_args()
    md = open_model_dir(args.model)
    net = md.load_supernet().fold_for_inference()
    table = cost_table(net)
    test = load_fashion_mnist("test")
    widths = net.bit_candidates[1:]
    uniform = [
        {
            "bitops": table.cost(net.uniform(b)),
            "accuracy": static_accuracy(net, test, md.input_spec, net.uniform(b)),
        }
        for b in net.bit_candidates
    ]
    rng = random.Random(0)
    points = []
    for _ in range(args.configs):
        config = [rng.choice(widths) for _ in range(net.num_switchable)]
        acc = static_accuracy(net, test, md.input_spec, config)
        points.append({"bit_widths": config, "bitops": table.cost(config), "accuracy": acc})
    accs = [p["accuracy"] for p in points]
    summary = {
        "widths": list(widths),
        "count": len(points),
        "mean": sum(accs) / len(accs),
        "min": min(accs),
        **mixing_summary(points, uniform),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
