"""Accuracy of every uniform width of a model directory on one split (docs/results.md).

The candidate set was chosen from these figures on the validation split:

    .venv/bin/python scripts/uniform_accuracy.py runs/fmnist-abn-2 --split val
"""

from __future__ import annotations

import argparse

from abn.data import load_fashion_mnist
from abn.evaluate import static_accuracy
from abn.store import open_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    args = parser.parse_args()
    md = open_model_dir(args.model)
    net = md.load_supernet().fold_for_inference()
    data = load_fashion_mnist(args.split)
    for bits in net.bit_candidates:
        accuracy = static_accuracy(net, data, md.input_spec, net.uniform(bits))
        print(f"{args.model} {args.split}: all {bits}-bit {100 * accuracy:.2f} %")


if __name__ == "__main__":
    main()
