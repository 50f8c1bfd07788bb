"""Save what ``ServedModel.infer`` answers on 3000 test images at seven budgets, or compare two
such files: for checking that an inference speed-up changed no decision (docs/profiling.md).

    .venv/bin/python scripts/compare_inference.py save after.pt
    cd <other checkout> && PYTHONPATH=$PWD <this checkout>/.venv/bin/python \\
        <this checkout>/scripts/compare_inference.py save <this checkout>/before.pt \\
        --model <this checkout>/model_store/fmnist-abn
    .venv/bin/python scripts/compare_inference.py compare before.pt after.pt
"""

from __future__ import annotations

import argparse

import torch

FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def save(model_dir: str, out: str, images: int = 3000, batch: int = 37) -> None:
    from abn.data import load_fashion_mnist
    from service.model import ServedModel

    torch.set_num_threads(1)
    model = ServedModel.load(model_dir, "cpu")
    x = load_fashion_mnist("test").images[:images]
    lo, hi = model.min_bitops, model.max_bitops
    mix = [lo + (hi - lo) * f for f in FRACTIONS]
    budgets = torch.tensor((mix * (images // len(mix) + 1))[:images], dtype=torch.float64)
    widths, probs, bitops = [], [], []
    for i in range(0, images, batch):
        o = model.infer(x[i : i + batch], budgets[i : i + batch], None)
        widths.append(o.widths)
        probs.append(o.probabilities)
        bitops.append(o.bitops)
    torch.save((torch.cat(widths), torch.cat(probs), torch.cat(bitops)), out)


def compare(a_path: str, b_path: str) -> None:
    a, b = torch.load(a_path), torch.load(b_path)
    print(f"widths identical: {bool(torch.equal(a[0], b[0]))}")
    print(f"BitOps identical: {bool(torch.equal(a[2], b[2]))}")
    print(f"largest probability difference: {float((a[1] - b[1]).abs().max()):.4f}")
    print(f"top-1 labels equal: {float((a[1].argmax(1) == b[1].argmax(1)).double().mean()):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--model", default="model_store/fmnist-abn")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args()
    if args.command == "save":
        save(args.model, args.out)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
