"""Milliseconds per ``ServedModel.infer`` call at small batch sizes, adaptive and pinned.

The per-batch cost the model thread pays before any arithmetic (layer-by-layer Python, policy,
grouping) is what decides serving speed at the batch sizes a server sees; this measures it on
one torch thread, repeated, so code versions can be compared (docs/profiling.md). To compare
another checkout, run it with that checkout first on PYTHONPATH:

    .venv/bin/python scripts/infer_latency.py --model model_store/fmnist-abn --repeats 5
    cd <other checkout> && PYTHONPATH=$PWD <this checkout>/.venv/bin/python \\
        <this checkout>/scripts/infer_latency.py --model <this checkout>/model_store/fmnist-abn

The images are random pixels unless ``--test-images``: then the first test images of
Fashion-MNIST, on which the policy re-runs what it does on real inputs (an adaptive call's
cost depends on how many images it re-runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from abn.data import load_fashion_mnist
from service.backends import CHOICES
from service.model import ServedModel


def budget_mix(model: ServedModel, batch: int) -> torch.Tensor:
    """``batch`` budgets cycling through the cheapest, the dearest and three between."""
    lo, hi = model.min_bitops, model.max_bitops
    mix = [lo + (hi - lo) * q for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return torch.tensor((mix * (batch // 5 + 1))[:batch], dtype=torch.float64)


def measure(
    model: ServedModel,
    batch: int,
    pinned_bits: int | None,
    images: int,
    source: torch.Tensor | None = None,
) -> float:
    """Mean milliseconds per call over about ``images`` images, after one warm call: random
    pixels, or consecutive batches of ``source`` (``(N, C, H, W)`` uint8) when given."""
    calls = max(3, images // batch)
    if source is None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=gen)
        inputs = [x] * calls
    else:
        whole = len(source) // batch  # the batches source holds (main checks there is one)
        inputs = [source[(i % whole) * batch :][:batch] for i in range(calls)]
    budgets = budget_mix(model, batch)
    pinned = None if pinned_bits is None else torch.full((batch, model.num_layers), pinned_bits)
    model.infer(inputs[0], budgets, pinned)
    start = time.perf_counter()
    for x in inputs:
        model.infer(x, budgets, pinned)
    return 1000 * (time.perf_counter() - start) / len(inputs)


def count_ops(model: ServedModel, batch: int, calls: int = 10) -> float:
    """Top-level aten ops one adaptive ``infer`` call dispatches (mixed budgets)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    lo, hi = model.min_bitops, model.max_bitops
    budgets = torch.linspace(lo, hi, batch, dtype=torch.float64)
    model.infer(x, budgets, None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model.infer(x, budgets, None)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / calls


def top_ops(model: ServedModel, batch: int, bits: int, calls: int = 30) -> str:
    """The aten ops of ``calls`` pinned ``infer`` calls on random pixels, by self CPU time:
    where a pinned batch's time goes, op by op."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    budgets = torch.full((batch,), model.max_bitops, dtype=torch.float64)
    pinned = torch.full((batch, model.num_layers), bits)
    model.infer(x, budgets, pinned)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model.infer(x, budgets, pinned)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="model_store/fmnist-abn")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--pinned-bits", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default="float", choices=CHOICES)
    p.add_argument("--images", type=int, default=600, help="images per measurement")
    p.add_argument(
        "--count-ops", action="store_true", help="also count aten ops per call (torch profiler)"
    )
    p.add_argument(
        "--test-images", action="store_true", help="Fashion-MNIST test images, not random pixels"
    )
    p.add_argument(
        "--top-ops",
        action="store_true",
        help="also print the aten ops of 30 pinned calls at the first batch size by CPU time",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    model = ServedModel.load(args.model, "cpu", args.backend)
    model.warm_up(64)
    batches = [int(v) for v in args.batches.split(",")]
    if args.test_images and args.images < max(batches):
        p.error(f"--images {args.images}: --test-images needs at least one batch of {max(batches)}")
    source = load_fashion_mnist("test").images[: args.images] if args.test_images else None
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for b in batches:
            for name, bits in (
                ("adaptive", None),
                (f"pinned {args.pinned_bits}-bit", args.pinned_bits),
            ):
                key = f"batch {b}, {name}"
                results.setdefault(key, []).append(measure(model, b, bits, args.images, source))
    report: dict[str, object] = {
        k: {"median_ms": statistics.median(v), "runs_ms": v} for k, v in results.items()
    }
    if args.count_ops:
        report["aten_ops_per_adaptive_call"] = {
            f"batch {b}": count_ops(model, int(b)) for b in args.batches.split(",")
        }
    print(json.dumps(report, indent=1))
    if args.top_ops:
        print(top_ops(model, batches[0], args.pinned_bits))


if __name__ == "__main__":
    main()
