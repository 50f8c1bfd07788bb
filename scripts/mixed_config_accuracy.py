"""Test accuracy of a fixed list of uniform and block-mixed configurations (docs/results.md).

Shows whether a supernet's layers can be mixed: per-image decisions only pay off when a mixed
configuration is about as accurate as the uniform ones around it. First 4000 test images:

    .venv/bin/python scripts/mixed_config_accuracy.py runs/fmnist-abn-base model_store/fmnist-abn
"""

from __future__ import annotations

import sys

import torch

from abn.bitops import cost_table
from abn.data import load_fashion_mnist
from abn.evaluate import static_accuracy
from abn.store import open_model_dir

CONFIGS = (
    [2] * 8,
    [8] * 8,
    [2, 2, 2, 2, 2, 8, 8, 8],
    [2, 2, 8, 8, 8, 8, 8, 8],
    [8, 8, 2, 2, 2, 2, 2, 2],
    [2, 2, 8, 8, 8, 2, 2, 2],
    [4, 4, 4, 4, 4, 8, 8, 8],
    [2, 2, 2, 2, 2, 4, 4, 4],
    [3, 3, 3, 3, 3, 2, 2, 2],
    [2, 2, 3, 3, 3, 2, 2, 2],
)


def main() -> None:
    torch.set_num_threads(1)
    test = load_fashion_mnist("test").subset(slice(0, 4000))
    for path in sys.argv[1:]:
        md = open_model_dir(path)
        net = md.load_supernet("cpu").fold_for_inference()
        table = cost_table(net)
        print(f"## {path}")
        for config in CONFIGS:
            accuracy = static_accuracy(net, test, md.input_spec, config)
            print(
                f"{config}  {table.cost(config) / 1e6:5.0f} M  {100 * accuracy:.2f} %", flush=True
            )


if __name__ == "__main__":
    main()
